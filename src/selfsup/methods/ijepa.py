"""I-JEPA (Assran et al., 2023): predict target-block representations from a context."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import field_validator

from selfsup.masks import MaskBatch, MaskSampler, build_mask_sampler, sample_masks
from selfsup.methods.base import InputSpec, PretrainingMethod, grey_outside
from selfsup.methods.registry import register_method
from selfsup.models import Predictor, VisionTransformerEncoder
from selfsup.models.predictor import PredictorConfig
from selfsup.models.tokens import GatheredQueries, TokenLayout
from selfsup.params import FloatRange, StrictModel, check_range
from selfsup.randomness import SampleDraws
from selfsup.schedules import linear_schedule


class IJEPAConfig(StrictModel):
    """Method-specific I-JEPA parameters (masking is shared, in `masking`)."""

    predictor: PredictorConfig = PredictorConfig()
    loss: Literal["l2", "smooth_l1"] = "l2"
    ema_momentum: FloatRange = (0.996, 1.0)

    @field_validator("ema_momentum")
    @classmethod
    def _momentum_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("hyperparameters.ema_momentum", value, 0.0, 1.0)


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


def masks_as_tensors(masks: MaskBatch) -> dict[str, torch.Tensor]:
    """The masks as the step's tensors. `context_slots` packs the contexts (the
    flat positions of real patches in the padded (B, Lc) grid): made here, where the
    batch is made, so the step never waits for the host to count tokens."""
    indices, valid = masks.context_indices, masks.context_valid
    if not valid.all():
        # Padded contexts get a multiple of 8 slots: fewer distinct attention shapes.
        extra = -indices.shape[1] % 8
        indices = np.pad(indices, ((0, 0), (0, extra)))
        valid = np.pad(valid, ((0, 0), (0, extra)))
    return {
        "context_indices": torch.from_numpy(indices),
        "context_valid": torch.from_numpy(valid),
        "context_slots": torch.from_numpy(np.flatnonzero(valid)),
        "target_indices": torch.from_numpy(masks.target_indices),
    }


def context_layout(context_indices: torch.Tensor, context_slots: torch.Tensor) -> TokenLayout:
    """Packed when the contexts differ in length, dense when every row is full."""
    batch, length = context_indices.shape
    if context_slots.shape[0] == batch * length:
        return TokenLayout.dense(batch, length)
    return TokenLayout.packing(batch, length, context_slots)


@dataclass(frozen=True)
class IJEPAMasks:
    """The images with their context and target masks (`selfsup.masks`)."""

    sampler: MaskSampler

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        return {"images": images, **masks_as_tensors(sample_masks(self.sampler, draws))}


@register_method
class IJEPA(PretrainingMethod):
    name = "ijepa"
    examples_title = "I-JEPA: val images, one context block, the target blocks it predicts"
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
            weight_init=encoder.weight_init,
            context=config.predictor.context,
        )
        # masking.strategy picks multi-block (the method) or one of the paper's ablations.
        self.sampler = build_mask_sampler(data.masking)

    def train(self, mode: bool = True) -> IJEPA:
        """Targets come from the EMA encoder in eval mode, so stochastic depth and
        dropout never randomize them."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def input_sampler(self) -> IJEPAMasks:
        return IJEPAMasks(self.sampler)

    def forward_with_masks(
        self, images: torch.Tensor, masks: MaskBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and targets, both (B, M, Lt, D)."""
        tensors = {k: v.to(images.device) for k, v in masks_as_tensors(masks).items()}
        return self.predict({"images": images, **tensors})

    def predict(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images = inputs["images"]
        context_idx, target_idx = inputs["context_indices"], inputs["target_indices"]
        layout = context_layout(context_idx, inputs["context_slots"])
        with torch.no_grad():
            targets = self.targets_at(images, target_idx)
        context = self.context_encoder.forward_tokens(images, context_idx, layout)
        predictions = self.predictor.forward_tokens(context, context_idx, layout, target_idx)
        return predictions, targets

    @torch.no_grad()
    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Every patch's target: the EMA encoder's output, layer-normed over the feature
        dimension as in the paper. (B, L, D)"""
        full = self.target_encoder(images)
        return F.layer_norm(full, full.shape[-1:])

    @torch.no_grad()
    def targets_at(self, images: torch.Tensor, target_indices: torch.Tensor) -> torch.Tensor:
        """`target_features` gathered at the target blocks (B, M, Lt) -> (B, M, Lt, D).
        The last block computes only the target patches' outputs (the others would be
        discarded); every patch is still a key and value there."""
        batch, num_patches = images.shape[0], self.target_encoder.num_patches
        queries = GatheredQueries(target_indices.flatten(1))
        layout = TokenLayout.dense(batch, num_patches)
        out = self.target_encoder.forward_tokens(images, None, layout, queries)
        out = F.layer_norm(out, out.shape[-1:])
        return out.view(*target_indices.shape, -1)

    def training_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        predictions, targets = self.predict(inputs)
        return prediction_loss(predictions.float(), targets.float(), self.config.loss)

    def examples(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        """Each image, its context block and its target blocks (what is predicted)."""
        masks = sample_masks(self.sampler, draws)
        batch, patches = images.shape[0], self.context_encoder.num_patches
        valid = masks.context_valid
        context = np.zeros((batch, patches), dtype=bool)
        context[np.nonzero(valid)[0], masks.context_indices[valid]] = True
        targets = np.zeros((batch, patches), dtype=bool)
        targets[np.arange(batch)[:, None], masks.target_indices.reshape(batch, -1)] = True
        patch_size = self.data.masking.patch_size
        return {
            "image": images,
            "context": grey_outside(images, torch.from_numpy(context), patch_size, self.data),
            "targets": grey_outside(images, torch.from_numpy(targets), patch_size, self.data),
        }

    def monitor_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Mean cosine similarity of each predicted target patch to its target, with
        masks fixed per held-out image: near 1 when the predictor reproduces the targets
        (also when both have collapsed: read it with RankMe)."""
        draws = SampleDraws.first_batch(len(images))
        predictions, targets = self.forward_with_masks(images, sample_masks(self.sampler, draws))
        cosine = F.cosine_similarity(predictions.float(), targets.float(), dim=-1)
        return {"prediction_cosine": float(cosine.mean())}

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        momentum = linear_schedule(*self.config.ema_momentum, step, total_steps)
        ema_update(self.target_encoder, self.context_encoder, momentum)
        return {"momentum": momentum}

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.target_encoder
