"""I-JEPA (Assran et al., 2023): predict target-block representations from a context."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.config import IJEPAConfig
from selfsup.masks import MaskBatch, build_mask_sampler
from selfsup.methods.base import InputSpec, PretrainingMethod
from selfsup.models import Predictor, VisionTransformerEncoder
from selfsup.models.vit import gather_tokens
from selfsup.schedules import linear_schedule


def prediction_loss(predictions: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """`l2`: squared error averaged over target patches and feature dimensions (the
    paper's average L2 distance divided by the width); `smooth_l1`: the official code's
    loss (beta 1)."""
    if kind == "l2":
        return F.mse_loss(predictions, targets)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(predictions, targets, beta=1.0)
    raise ValueError(f"unknown loss {kind!r}; use 'l2' or 'smooth_l1'")


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online, parameter by parameter."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


class IJEPA(PretrainingMethod):
    name = "ijepa"
    config_class = IJEPAConfig

    def __init__(
        self,
        config: IJEPAConfig,
        encoder: VisionTransformerEncoder,
        data: InputSpec,
    ) -> None:
        super().__init__(config, encoder, data)
        self.config = config
        self.context_encoder = encoder
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.predictor = Predictor(
            grid=encoder.grid,
            encoder_dim=encoder.embed_dim,
            embed_dim=config.predictor.embed_dim,
            depth=config.predictor.depth,
            num_heads=config.predictor.num_heads,
            mlp_ratio=config.predictor.mlp_ratio,
        )
        # masking.strategy picks multi-block (the method) or one of the paper's ablations.
        self.sampler = build_mask_sampler(data.masking)

    def train(self, mode: bool = True) -> IJEPA:
        """Targets come from the EMA encoder in eval mode, so stochastic depth and
        dropout never randomize them."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def masks_to(self, masks: MaskBatch, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.from_numpy(array).to(device, non_blocking=True)
            for array in (masks.context_indices, masks.context_valid, masks.target_indices)
        )

    def forward_with_masks(
        self, images: torch.Tensor, masks: MaskBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and targets, both (B, M, Lt, D)."""
        context_idx, context_valid, target_idx = self.masks_to(masks, images.device)
        with torch.no_grad():
            full = self.target_encoder(images)
            full = F.layer_norm(full, full.shape[-1:])
            targets = gather_tokens(full, target_idx)
        context = self.context_encoder(images, context_idx, context_valid)
        predictions = self.predictor(context, context_idx, context_valid, target_idx)
        return predictions, targets

    def training_loss(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        masks = self.sampler.sample(images.shape[0], rng)
        predictions, targets = self.forward_with_masks(images, masks)
        return prediction_loss(predictions.float(), targets.float(), self.config.loss)

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        momentum = linear_schedule(*self.config.ema_momentum, step, total_steps)
        ema_update(self.target_encoder, self.context_encoder, momentum)
        return {"momentum": momentum}

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.target_encoder
