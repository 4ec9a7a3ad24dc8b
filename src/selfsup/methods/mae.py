"""MAE (He et al., 2021): reconstruct the pixels of heavily masked patches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from selfsup.methods.base import InputSpec, PretrainingMethod, grey_outside
from selfsup.methods.registry import register_method
from selfsup.models import VisionTransformerEncoder
from selfsup.models.tokens import TokenBlock, TokenLayout
from selfsup.models.vit import LayerNorm, gather_tokens, init_weights, sincos_positions
from selfsup.params import StrictModel, check_width
from selfsup.randomness import SampleDraws


class DecoderConfig(StrictModel):
    """The MAE decoder (paper: width 512, depth 8, 16 heads for ViT-L, whose encoder is
    1024 wide and 24 deep); its ablation finds deeper decoders give better linear probes."""

    embed_dim: int = Field(128, ge=4)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DecoderConfig:
        check_width("decoder", self.embed_dim, self.num_heads)
        return self


class MAEConfig(StrictModel):
    """Method-specific MAE parameters; the paper's defaults."""

    mask_ratio: float = Field(0.75, gt=0, lt=1)
    norm_pix_loss: bool = True
    decoder: DecoderConfig = DecoderConfig()


def random_masking(
    num_patches: int, mask_ratio: float, rngs: Sequence[np.random.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle each row's patch indices by random noise (one generator per row) and keep
    the first int(N * (1 - r)).

    Returns the kept indices (B, K), in shuffled order, and `restore` (B, N), the inverse
    permutation: position j of the original order sits at index restore[:, j] of the
    shuffled order.
    """
    keep = int(num_patches * (1.0 - mask_ratio))
    noise = torch.from_numpy(np.stack([rng.random(num_patches) for rng in rngs]))
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    return shuffle[:, :keep], restore


@dataclass(frozen=True)
class MAEMasks:
    """The images with each row's kept patches and the permutation that restores them."""

    num_patches: int
    mask_ratio: float

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        kept, restore = random_masking(self.num_patches, self.mask_ratio, draws.per_sample("masks"))
        return {"images": images, "kept": kept, "restore": restore}


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch_size**2 * C), patches row-major like `PatchEmbed`."""
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, N, patch_size**2 * C) -> (B, C, H, W): the inverse of `patchify`."""
    b, n, _ = patches.shape
    grid = int(round(n**0.5))
    x = patches.reshape(b, grid, grid, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid * patch_size, grid * patch_size)


def masked_patch_loss(
    predictions: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """Mean squared error per patch, averaged over masked patches only (masked: (B, N) 0/1)."""
    per_patch = ((predictions - targets) ** 2).mean(dim=-1)
    return (per_patch * masked).sum() / masked.sum()


class MAEDecoder(nn.Module):
    """Light decoder: visible tokens plus a shared mask token per hidden patch, unshuffled,
    with the decoder's own fixed positions; predicts each patch's pixels."""

    def __init__(
        self,
        grid: int,
        encoder_dim: int,
        patch_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        weight_init: str = "xavier",
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_positions(grid, embed_dim)[None], persistent=False)
        self.blocks = nn.ModuleList(
            TokenBlock(embed_dim, num_heads, 4.0, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(depth)
        )
        self.norm = LayerNorm(embed_dim)
        self.predict = nn.Linear(embed_dim, patch_dim)
        self.apply(partial(init_weights, scheme=weight_init))
        nn.init.normal_(self.mask_token, std=0.02)

    def unshuffle(self, visible: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """visible (B, K, D) in shuffled order -> (B, N, D) in the original patch order,
        with the mask token at every hidden patch."""
        b, k, d = visible.shape
        hidden = self.mask_token.expand(b, restore.shape[1] - k, d)
        shuffled = torch.cat([visible, hidden], dim=1)
        return gather_tokens(shuffled, restore)

    def forward(self, visible: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.unshuffle(self.embed(visible), restore) + self.pos_embed
        layout = TokenLayout.dense(*x.shape[:2])
        for block in self.blocks:
            x = block(x, layout)
        return self.predict(self.norm(x))


@register_method
class MAE(PretrainingMethod):
    name = "mae"
    examples_title = "MAE: val images, the visible patches, the reconstruction"
    config_class = MAEConfig

    def __init__(
        self, config: MAEConfig, encoder: VisionTransformerEncoder, data: InputSpec
    ) -> None:
        super().__init__(config, encoder, data)
        if int(encoder.num_patches * (1.0 - config.mask_ratio)) < 1:
            raise ValueError(
                f"mae mask_ratio={config.mask_ratio} leaves no visible patch of "
                f"{encoder.num_patches}; lower it"
            )
        self.config = config
        self.encoder = encoder
        self.patch_size = data.masking.patch_size
        self.decoder = MAEDecoder(
            grid=encoder.grid,
            encoder_dim=encoder.embed_dim,
            patch_dim=self.patch_size**2 * data.channels,
            embed_dim=config.decoder.embed_dim,
            depth=config.decoder.depth,
            num_heads=config.decoder.num_heads,
            weight_init=encoder.weight_init,
        )

    def reconstruct(
        self, images: torch.Tensor, kept: torch.Tensor, restore: torch.Tensor
    ) -> torch.Tensor:
        """Pixel predictions (B, N, patch_dim) for every patch, original order."""
        visible = self.encoder(images, kept.to(images.device))
        return self.decoder(visible, restore.to(images.device))

    def pixel_targets(self, images: torch.Tensor) -> torch.Tensor:
        targets = patchify(images, self.patch_size)
        if self.config.norm_pix_loss:
            mean = targets.mean(dim=-1, keepdim=True)
            var = targets.var(dim=-1, keepdim=True)
            targets = (targets - mean) / (var + 1e-6) ** 0.5
        return targets

    def input_sampler(self) -> MAEMasks:
        return MAEMasks(self.encoder.num_patches, self.config.mask_ratio)

    def examples(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        """Each image, what the encoder sees of it, and the decoder's reconstruction of
        the hidden patches beside the visible ones (with norm_pix_loss the predictions
        are per-patch standardized; each true patch's mean and spread undo that)."""
        inputs = self.input_sampler()(images, draws)
        kept = inputs["kept"].to(images.device)
        predictions = self.reconstruct(images, kept, inputs["restore"]).float()
        patches = patchify(images, self.patch_size)
        if self.config.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            var = patches.var(dim=-1, keepdim=True)
            predictions = predictions * (var + 1e-6) ** 0.5 + mean
        visible = torch.zeros(patches.shape[:2], dtype=torch.bool, device=images.device)
        visible.scatter_(1, kept, True)
        filled = torch.where(visible[..., None], patches, predictions)
        return {
            "image": images,
            f"visible ({1 - self.config.mask_ratio:.0%})": grey_outside(
                images, visible, self.patch_size, self.data
            ),
            "reconstruction": unpatchify(filled, self.patch_size, images.shape[1]),
        }

    def training_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        images, kept, restore = inputs["images"], inputs["kept"], inputs["restore"]
        predictions = self.reconstruct(images, kept, restore)
        masked = torch.ones_like(restore, dtype=predictions.dtype)
        masked.scatter_(1, kept.to(masked.device), 0.0)
        return masked_patch_loss(predictions.float(), self.pixel_targets(images).float(), masked)

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.encoder
