"""A ViT encoder that can see a subset of patches.

timm's `VisionTransformer` always encodes every patch and learns its positions; masked
methods need fixed positions added *before* patches are dropped, so the encoder is
assembled here from timm's `PatchEmbed`, `Block` and 2-D sin-cos embedding.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator
from timm.layers import (
    PatchEmbed,
    build_sincos2d_pos_embed,
    resample_abs_pos_embed,
    trunc_normal_,
)
from torch import nn

from selfsup.models.tokens import Queries, TokenBlock, TokenLayout
from selfsup.params import StrictModel, check_width


class EncoderConfig(StrictModel):
    """ViT encoder shared by every method so comparisons are fair."""

    embed_dim: int = Field(192, ge=4)
    depth: int = Field(6, ge=1)
    num_heads: int = Field(3, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    # xavier: MAE's official code; trunc_normal: I-JEPA's (selfsup.models.vit.init_weights).
    weight_init: Literal["xavier", "trunc_normal"] = "xavier"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EncoderConfig:
        check_width("encoder", self.embed_dim, self.num_heads)
        return self


LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2-D sin-cos embedding, row-major like `PatchEmbed`."""
    return build_sincos2d_pos_embed([grid, grid], dim)


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), indices (B, ...) -> (B, ..., D)."""
    flat = indices.reshape(indices.shape[0], -1)
    picked = torch.gather(tokens, 1, flat[..., None].expand(-1, -1, tokens.shape[-1]))
    return picked.reshape(*indices.shape, tokens.shape[-1])


def init_weights(module: nn.Module, scheme: str) -> None:
    """ViT initialization of one module (use with `Module.apply`); zero biases and unit
    LayerNorms in both schemes.

    trunc_normal (I-JEPA's official code, timm's default): linears truncated normal with
    std 0.02; the patch-embedding convolution keeps PyTorch's default. xavier (MAE's
    official code): linears, and the patch-embedding convolution viewed as a linear,
    xavier-uniform. On small images the larger xavier weights matter (docs/studies.md,
    "Weight initialization").
    """
    if isinstance(module, nn.Linear):
        if scheme == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d) and scheme == "xavier":
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformerEncoder(nn.Module):
    """ViT without cls token, with fixed 2-D sin-cos positions.

    `forward(images, patch_indices, valid)` encodes only the patches listed per image;
    padded entries (valid False) are hidden from attention. `forward_tokens` does the
    same on packed tokens (`selfsup.models.tokens`), so padding costs nothing. Images of
    another size (a multiple of the patch size: LeJEPA's low-resolution local views) get
    the positions resampled to their grid, so they span the same range as a full image's.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        weight_init: str = "xavier",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.weight_init = weight_init
        self.patch_embed = PatchEmbed(
            image_size, patch_size, in_chans, embed_dim, strict_img_size=False
        )
        self.grid = image_size // patch_size
        self.register_buffer(
            "pos_embed", sincos_positions(self.grid, embed_dim)[None], persistent=False
        )
        drop_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            TokenBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=True,
                drop_path=rate,
                norm_layer=LayerNorm,
            )
            for rate in drop_rates
        )
        self.norm = LayerNorm(embed_dim)
        self.apply(partial(init_weights, scheme=weight_init))

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def patch_grid(self, images: torch.Tensor) -> list[int]:
        """[rows, columns] of `images`' patches."""
        patch = self.patch_embed.patch_size
        return [images.shape[-2] // patch[0], images.shape[-1] // patch[1]]

    def positions(self, images: torch.Tensor) -> torch.Tensor:
        """(1, patches, D) positions of `images`' patch grid: the full grid's, or those
        resampled (bicubic, as timm does for other resolutions) to a smaller or larger one."""
        grid = self.patch_grid(images)
        if grid == [self.grid, self.grid]:
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, grid, [self.grid, self.grid], num_prefix_tokens=0
        )

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, patches, D) patch embeddings with their positions, in
        contiguous memory. The convolution's output, flattened, is (B, D, patches)
        transposed; sums keep their first operand's strides, so without the copy every
        residual sum downstream is transposed too: each LayerNorm copies its input to
        contiguous memory first, and the stream's casts and sums run on strided memory
        (docs/training-speed.md)."""
        return (self.patch_embed(images) + self.positions(images)).contiguous()

    def embed(
        self, images: torch.Tensor, patch_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        tokens = self.patch_tokens(images)
        return tokens if patch_indices is None else gather_tokens(tokens, patch_indices)

    def embed_tokens(
        self, images: torch.Tensor, patch_indices: torch.Tensor | None, layout: TokenLayout
    ) -> torch.Tensor:
        """The layout's tokens of the listed patches (all patches when None), with
        their positions: (T, D) packed or (B, L, D) dense."""
        tokens = self.patch_tokens(images)
        if patch_indices is None:
            return tokens
        if not layout.packed:
            return gather_tokens(tokens, patch_indices)
        batch, num_patches = tokens.shape[:2]
        rows = patch_indices + torch.arange(batch, device=tokens.device)[:, None] * num_patches
        rows = rows.flatten().index_select(0, layout.slots)
        return layout.with_spare_rows(tokens.reshape(batch * num_patches, -1).index_select(0, rows))

    def forward(
        self,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D) normed tokens of the selected patches (zeros where
        `valid` is False)."""
        layout = self.layout(images, patch_indices, valid)
        return layout.to_padded(self.forward_tokens(images, patch_indices, layout))

    def layout(
        self,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> TokenLayout:
        """The layout of the selected patches: packed when `valid` has gaps."""
        if valid is not None:
            return TokenLayout.from_valid(valid)
        if patch_indices is not None:
            return TokenLayout.dense(images.shape[0], patch_indices.shape[1])
        rows, columns = self.patch_grid(images)
        return TokenLayout.dense(images.shape[0], rows * columns)

    def forward_tokens(
        self,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None,
        layout: TokenLayout,
        queries: Queries | None = None,
    ) -> torch.Tensor:
        """Normed outputs of the last block in `layout`'s shape; with `queries`, only
        theirs, (B, Q, D)."""
        x = self.embed_tokens(images, patch_indices, layout)
        last = len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            x = block(x, layout, queries if depth == last else None)
        return self.norm(x)

    def forward_layers(
        self,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        last: int = 1,
    ) -> list[torch.Tensor]:
        """Normed token outputs (B, L, D) of the last `last` blocks, oldest first."""
        layout = self.layout(images, patch_indices, valid)
        x = self.embed_tokens(images, patch_indices, layout)
        outputs = []
        for depth, block in enumerate(self.blocks):
            x = block(x, layout)
            if depth >= len(self.blocks) - last:
                outputs.append(layout.to_padded(self.norm(x)))
        return outputs


def build_encoder(
    config: EncoderConfig, image_size: int, patch_size: int, in_chans: int
) -> VisionTransformerEncoder:
    return VisionTransformerEncoder(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=config.drop_path_rate,
        weight_init=config.weight_init,
    )


def encoder_checkpoint(
    encoder: VisionTransformerEncoder,
    config: EncoderConfig,
    image_size: int,
    patch_size: int,
    normalization: dict,
) -> dict:
    """Weights plus everything needed to rebuild the module and to prepare its input
    (`normalization`: per-channel {"mean": [...], "std": [...]} in [0, 1] pixel units),
    as plain values."""
    in_chans = encoder.patch_embed.proj.in_channels
    return {
        "state_dict": encoder.state_dict(),
        "config": {
            "encoder": config.model_dump(),
            "image_size": image_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "normalization": {
                "mean": [float(v) for v in normalization["mean"]],
                "std": [float(v) for v in normalization["std"]],
            },
        },
    }


def encoder_from_checkpoint(checkpoint: dict) -> VisionTransformerEncoder:
    config = checkpoint["config"]
    encoder = build_encoder(
        EncoderConfig(**config["encoder"]),
        config["image_size"],
        config["patch_size"],
        config["in_chans"],
    )
    encoder.load_state_dict(checkpoint["state_dict"])
    return encoder.eval()
