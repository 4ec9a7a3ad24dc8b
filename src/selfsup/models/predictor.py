"""The narrow I-JEPA predictor."""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator
from timm.layers import trunc_normal_
from torch import nn

from selfsup.models.tokens import TailQueries, TokenBlock, TokenLayout
from selfsup.models.vit import LayerNorm, init_weights, sincos_positions
from selfsup.params import StrictModel, check_width


class PredictorConfig(StrictModel):
    """The narrow I-JEPA predictor (paper: width 384 for ViT-B/L/H)."""

    embed_dim: int = Field(96, ge=4)
    depth: int = Field(3, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    # per_block (the paper): the context repeated once per target block; shared: the
    # context once, each block's queries attending to it and their own block
    # (selfsup.models.predictor).
    context: Literal["per_block", "shared"] = "per_block"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PredictorConfig:
        check_width("predictor", self.embed_dim, self.num_heads)
        return self


# How the target blocks of one image share its context (PredictorConfig.context).
PER_BLOCK = "per_block"
SHARED = "shared"


class Predictor(nn.Module):
    """Predicts target-block representations from context tokens.

    Context tokens are projected to the predictor width and given their positions; each
    target block is queried with one token per target patch (a shared learnable mask
    token plus that patch's position). Only the target-token outputs are returned,
    projected back to the encoder width.

    `context` sets how the blocks of an image meet its context:
    - `per_block` (the paper's): one sequence per target block, the context repeated in
      each, so target blocks never see each other and context tokens attend to the
      context and that block's queries;
    - `shared`: one sequence per image, the context once and every block's queries
      after it; context tokens attend to the context only and each block's queries to
      the context and their own block, so blocks still never see each other. The
      context is computed once instead of once per block.
    """

    def __init__(
        self,
        grid: int,
        encoder_dim: int,
        embed_dim: int = 96,
        depth: int = 3,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        weight_init: str = "xavier",
        context: str = PER_BLOCK,
    ) -> None:
        super().__init__()
        if context not in (PER_BLOCK, SHARED):
            raise ValueError(f"predictor context {context!r}: use {PER_BLOCK!r} or {SHARED!r}")
        self.context = context
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_positions(grid, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(
            TokenBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(depth)
        )
        self.norm = LayerNorm(embed_dim)
        self.project = nn.Linear(embed_dim, encoder_dim)
        self.apply(partial(init_weights, scheme=weight_init))
        trunc_normal_(self.mask_token, std=0.02)

    def forward(
        self,
        context_tokens: torch.Tensor,
        context_indices: torch.Tensor,
        context_valid: torch.Tensor,
        target_indices: torch.Tensor,
    ) -> torch.Tensor:
        """context (B, Lc, D), indices (B, Lc), valid (B, Lc), targets (B, M, Lt)
        -> predictions (B, M, Lt, D)."""
        layout = TokenLayout.from_valid(context_valid)
        return self.forward_tokens(
            layout.to_packed(context_tokens), context_indices, layout, target_indices
        )

    def forward_tokens(
        self,
        context_tokens: torch.Tensor,
        context_indices: torch.Tensor,
        context_layout: TokenLayout,
        target_indices: torch.Tensor,
    ) -> torch.Tensor:
        """`context_tokens` in `context_layout`'s shape (packed (T, D) or dense (B, Lc,
        D)), their patch indices (B, Lc), targets (B, M, Lt) -> (B, M, Lt, D)."""
        batch, num_blocks, block_len = target_indices.shape
        positions = context_layout.to_packed(context_indices[..., None]).squeeze(-1)
        context = self.embed(context_tokens) + self.pos_embed[positions]
        queries = self.mask_token + self.pos_embed[target_indices]
        if self.context == SHARED:
            x, layout = shared_sequences(context, context_layout, queries)
            wanted = TailQueries(num_blocks * block_len)
        else:
            x, layout = per_block_sequences(context, context_layout, queries)
            wanted = TailQueries(block_len)
        last = len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            x = block(x, layout, wanted if depth == last else None)
        predictions = self.project(self.norm(x))
        return predictions.reshape(batch, num_blocks, block_len, -1)


def per_block_sequences(
    context: torch.Tensor, context_layout: TokenLayout, queries: torch.Tensor
) -> tuple[torch.Tensor, TokenLayout]:
    """One sequence per (image, block): the image's context, then the block's queries
    (B, M, Lt, D). Packed contexts stay packed: the context tokens come first (each
    repeated once per block), the queries last, sequence by sequence."""
    batch, num_blocks, block_len, width = queries.shape
    context_len = context_layout.length
    length = context_len + block_len
    sequences = batch * num_blocks
    queries = queries.reshape(sequences, block_len, width)
    if not context_layout.packed:
        repeated = context.repeat_interleave(num_blocks, dim=0)
        return torch.cat([repeated, queries], dim=1), TokenLayout.dense(sequences, length)
    slots = context_layout.slots
    image, position = torch.div(slots, context_len, rounding_mode="floor"), slots % context_len
    blocks = torch.arange(num_blocks, device=slots.device)
    context_slots = ((image[:, None] * num_blocks + blocks) * length + position[:, None]).flatten()
    query_slots = _tail_slots(sequences, length, block_len, slots.device)
    layout = TokenLayout.packing(sequences, length, torch.cat([context_slots, query_slots]))
    repeated = context_layout.real_tokens(context).repeat_interleave(num_blocks, dim=0)
    return layout.with_spare_rows(torch.cat([repeated, queries.flatten(0, 1)])), layout


def shared_sequences(
    context: torch.Tensor, context_layout: TokenLayout, queries: torch.Tensor
) -> tuple[torch.Tensor, TokenLayout]:
    """One sequence per image: its context, then every block's queries (B, M, Lt, D),
    with the attention structure of `Predictor`'s `shared` mode."""
    batch, num_blocks, block_len, width = queries.shape
    context_len = context_layout.length
    query_len = num_blocks * block_len
    length = context_len + query_len
    queries = queries.reshape(batch, query_len, width)
    device = queries.device
    # -1 marks context slots; a query slot carries its block's number.
    group = torch.cat(
        [
            torch.full((context_len,), -1, device=device),
            torch.arange(num_blocks, device=device).repeat_interleave(block_len),
        ]
    )
    structure = (group[None, :] == -1) | (group[:, None] == group[None, :])
    if not context_layout.packed:
        tokens = torch.cat([context, queries], dim=1)
        return tokens, TokenLayout(batch, length, None, structure)
    slots = context_layout.slots
    image, position = torch.div(slots, context_len, rounding_mode="floor"), slots % context_len
    context_slots = image * length + position
    query_slots = _tail_slots(batch, length, query_len, device)
    all_slots = torch.cat([context_slots, query_slots])
    layout = TokenLayout.packing(batch, length, all_slots, structure)
    tokens = torch.cat([context_layout.real_tokens(context), queries.flatten(0, 1)])
    return layout.with_spare_rows(tokens), layout


def _tail_slots(sequences: int, length: int, count: int, device: torch.device) -> torch.Tensor:
    """Slots of the last `count` positions of each sequence, sequence by sequence."""
    starts = torch.arange(sequences, device=device)[:, None] * length + (length - count)
    return (starts + torch.arange(count, device=device)).flatten()
