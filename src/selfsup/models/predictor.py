"""The narrow I-JEPA predictor."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from selfsup.models.vit import LayerNorm, init_weights, key_padding_mask, sincos_positions


class Predictor(nn.Module):
    """Predicts target-block representations from context tokens.

    Context tokens are projected to the predictor width and given their positions; each
    target block is queried with one token per target patch (a shared learnable mask
    token plus that patch's position). Blocks are predicted independently: the context
    is repeated once per block, so target blocks never see each other. Only the
    target-token outputs are returned, projected back to the encoder width.
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
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_positions(grid, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
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
        batch, num_blocks, block_len = target_indices.shape
        context = self.embed(context_tokens) + self.pos_embed[context_indices]
        context = context.repeat_interleave(num_blocks, dim=0)
        queries = self.mask_token + self.pos_embed[target_indices.flatten(0, 1)]
        x = torch.cat([context, queries], dim=1)
        valid = torch.cat(
            [
                context_valid.repeat_interleave(num_blocks, dim=0),
                context_valid.new_ones(batch * num_blocks, block_len),
            ],
            dim=1,
        )
        mask = key_padding_mask(valid)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        predictions = self.project(self.norm(x[:, -block_len:]))
        return predictions.reshape(batch, num_blocks, block_len, -1)
