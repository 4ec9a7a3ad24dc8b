"""LeJEPA (Balestriero and LeCun, 2025): views of one image predict each other, and
SIGReg keeps the embeddings an isotropic Gaussian, so nothing collapses without an EMA
teacher or a stop-gradient.

Loss = lambda * SIGReg + (1 - lambda) * invariance, over the augmented views of each image
and the projector's outputs z. The views are V global ones at the image's size and,
optionally, L local ones at a lower resolution (multi-crop, as in the paper's ImageNet
runs), which cost a fraction of a global view. Invariance: the mean squared distance of
each view's z to the mean z of its image's global views. SIGReg (Sketched Isotropic Gaussian Regularization): z
projected on M random unit directions (redrawn each step); each 1-D projection's
empirical characteristic function is compared with the standard normal's by the
Epps-Pulley statistic, N * integral |ECF(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt over
[-t_max, t_max] (trapezoid on [0, t_max], doubled: the integrand is even), averaged over
directions and over views. Written here: no library implements SIGReg.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as nnf

from selfsup import distributed
from selfsup.methods.base import InputSpec, PretrainingMethod
from selfsup.methods.registry import register_method
from selfsup.methods.views import AugmentationConfig, AugmentedViews, ViewAugmentation
from selfsup.models import VisionTransformerEncoder
from selfsup.params import FloatRange, StrictModel, check_range
from selfsup.randomness import SampleDraws


class LeJEPAProjectorConfig(StrictModel):
    """The projector: Linear -> (BatchNorm) -> ReLU, twice, then Linear to `out_dim`
    (the minimal example: 512 -> 2048 -> 2048 -> 16 with BatchNorm)."""

    hidden_dim: int = Field(512, ge=1)
    out_dim: int = Field(16, ge=1)
    # Per process under DDP on the CPU (SyncBatchNorm needs a GPU); off makes N
    # processes train exactly as one.
    batch_norm: bool = True


class SIGRegConfig(StrictModel):
    directions: int = Field(256, ge=1)  # M random unit directions, redrawn each step
    knots: int = Field(17, ge=2)  # trapezoid knots on [0, t_max]
    t_max: float = Field(3.0, gt=0)


class LocalViewsConfig(StrictModel):
    """Low-resolution views: the global views' augmentations with their own crop scale,
    downsampled to `image_size` (a multiple of the patch size, below the image size;
    None: half the image size, down to a multiple of the patch size)."""

    count: int = Field(0, ge=0)
    image_size: int | None = Field(None, ge=1)
    crop_scale: FloatRange = (0.3, 1.0)

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("local_views.crop_scale", value, 0.0, 1.0)


class LeJEPAConfig(StrictModel):
    """Method-specific LeJEPA parameters."""

    # lambda: SIGReg's share of the loss, the method's one trade-off.
    sigreg_weight: float = Field(0.02, gt=0, lt=1)
    views: int = Field(4, ge=2)  # global views, at the image's size
    local_views: LocalViewsConfig = LocalViewsConfig()
    projector: LeJEPAProjectorConfig = LeJEPAProjectorConfig()
    sigreg: SIGRegConfig = SIGRegConfig()
    augmentations: AugmentationConfig = AugmentationConfig()


def unit_directions(dim: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """(dim, count) float32 columns drawn uniformly on the unit sphere."""
    directions = rng.standard_normal((dim, count))
    return torch.from_numpy(directions / np.linalg.norm(directions, axis=0)).float()


def epps_pulley(projections: torch.Tensor, knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """The Epps-Pulley statistic of each column of `projections` (N, M) against the
    standard normal, (M,): N * integral over [-t_max, t_max] of |ECF(t) - exp(-t^2/2)|^2
    weighted by exp(-t^2/2)."""
    t = torch.linspace(0, t_max, knots, device=projections.device, dtype=projections.dtype)
    normal = torch.exp(-0.5 * t * t)
    angles = projections[..., None] * t  # (N, M, T)
    real = torch.cos(angles).mean(dim=0) - normal
    imaginary = torch.sin(angles).mean(dim=0)
    integrand = (real * real + imaginary * imaginary) * normal
    return 2 * torch.trapezoid(integrand, t, dim=-1) * projections.shape[0]


def sigreg(
    z: torch.Tensor, directions: torch.Tensor, knots: int = 17, t_max: float = 3.0
) -> torch.Tensor:
    """SIGReg of embeddings z (N, K) along unit `directions` (K, M): the mean Epps-Pulley
    statistic of the projections. Near 0 for standard normal z; large when z collapses,
    shifts or stretches along a direction."""
    return epps_pulley(z @ directions, knots, t_max).mean()


def invariance(z: torch.Tensor, global_views: int | None = None) -> torch.Tensor:
    """z (V, N, K), global views first: the mean squared distance of each view's
    embedding to the mean embedding of its image's first `global_views` views (all V
    when None; 0 when the views agree)."""
    centre = z[:global_views].mean(dim=0, keepdim=True)
    return (z - centre).square().mean()


class LeJEPAInputs:
    """The global views of each image, its local views (`local_views`, when there are
    any) and this step's SIGReg directions (one draw per global step, shared by every
    micro-batch and process)."""

    def __init__(
        self,
        views: AugmentedViews,
        local_views: AugmentedViews | None,
        dim: int,
        directions: int,
    ) -> None:
        self.views = views
        self.local_views = local_views
        self.dim = dim
        self.directions = directions

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        directions = unit_directions(self.dim, self.directions, draws.for_batch("sigreg"))
        inputs = {**self.views(images, draws), "directions": directions}
        if self.local_views is not None:
            inputs.update(self.local_views(images, draws))
        return inputs


def local_image_size(setting: int | None, image_size: int, patch_size: int) -> int:
    """The local views' side: the setting, or half the image's in whole patches (the
    paper's ImageNet local views are 96 px for 224 px global ones)."""
    if setting is not None:
        return setting
    return max(patch_size, image_size // 2 // patch_size * patch_size)


def check_local_size(local_size: int, image_size: int, patch_size: int) -> None:
    """Local views are a whole number of patches, and smaller than the image."""
    if local_size % patch_size or not patch_size <= local_size < image_size:
        raise ValueError(
            f"lejepa local_views.image_size={local_size} must be a multiple of "
            f"masking.patch_size={patch_size} below masking.image_size={image_size}; "
            f"e.g. {local_image_size(None, image_size, patch_size)} (null picks that)"
        )


def projector(in_dim: int, config: LeJEPAProjectorConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(2):
        layers.append(nn.Linear(width, config.hidden_dim))
        if config.batch_norm:
            layers.append(nn.BatchNorm1d(config.hidden_dim))
        layers.append(nn.ReLU())
        width = config.hidden_dim
    layers.append(nn.Linear(width, config.out_dim))
    return nn.Sequential(*layers)


@register_method
class LeJEPA(PretrainingMethod):
    name = "lejepa"
    config_class = LeJEPAConfig
    examples_title = "LeJEPA: val images and the views whose embeddings must agree"

    def __init__(
        self, config: LeJEPAConfig, encoder: VisionTransformerEncoder, data: InputSpec
    ) -> None:
        super().__init__(config, encoder, data)
        self.config = config
        self.encoder = encoder
        self.projector = projector(encoder.embed_dim, config.projector)
        self.augment = ViewAugmentation(
            config.augmentations, data.masking.image_size, data.channels
        )
        local = config.local_views
        local_size = local_image_size(
            local.image_size, data.masking.image_size, data.masking.patch_size
        )
        if local.count:
            check_local_size(local_size, data.masking.image_size, data.masking.patch_size)
        augmentations = config.augmentations.model_copy(update={"crop_scale": local.crop_scale})
        self.local_augment = ViewAugmentation(
            augmentations, data.masking.image_size, data.channels, local_size
        )

    def input_sampler(self) -> LeJEPAInputs:
        mean, std = self.data.mean, self.data.std
        views = AugmentedViews(self.augment, mean, std, self.config.views)
        count = self.config.local_views.count
        local = (
            AugmentedViews(self.local_augment, mean, std, count, "local_views") if count else None
        )
        return LeJEPAInputs(
            views, local, self.config.projector.out_dim, self.config.sigreg.directions
        )

    def embeddings(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projector outputs (V + L, N, K), float32, of the global views (V, N, C, H, W)
        and then the local ones (L, N, C, h, w). The two resolutions pass the encoder
        apart but the projector together, so its BatchNorm normalizes over every view."""
        views = [inputs["views"]]
        if "local_views" in inputs:
            views.append(inputs["local_views"])
        pooled = [self.encoder(group.flatten(0, 1)).mean(dim=1) for group in views]
        count, batch = sum(len(group) for group in views), views[0].shape[1]
        return self.projector(torch.cat(pooled)).float().view(count, batch, -1)

    def sigreg_term(self, z: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """SIGReg of each view's embeddings, averaged over views. Data-parallel: every
        process's projections are gathered (with gradients), so the statistic is the
        global batch's, as in one process."""
        projections = z @ directions.to(z.device)  # (V, N, M)
        if distributed.is_running():
            gathered = distributed.gather_with_gradients(projections.transpose(0, 1))
            projections = gathered.transpose(0, 1)
        settings = self.config.sigreg
        return torch.stack(
            [epps_pulley(view, settings.knots, settings.t_max).mean() for view in projections]
        ).mean()

    def training_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.embeddings(inputs)
        weight = self.config.sigreg_weight
        agreement = invariance(z, global_views=self.config.views)
        return weight * self.sigreg_term(z, inputs["directions"]) + (1 - weight) * agreement

    def examples(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        """Each image, its first four global views and its first two local ones, shown
        at the image's size (each local pixel a block, so their resolution shows)."""
        inputs = self.input_sampler()(images, draws)
        pictures = {"image": images}
        for v, view in enumerate(inputs["views"][:4]):
            pictures[f"view {v + 1}"] = view
        if "local_views" in inputs:
            for v, view in enumerate(inputs["local_views"][:2]):
                pictures[f"local view {v + 1}"] = nnf.interpolate(view, size=images.shape[-2:])
        return pictures

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.encoder
