"""LeJEPA (Balestriero and LeCun, 2025): views of one image predict each other, and
SIGReg keeps the embeddings an isotropic Gaussian, so nothing collapses without an EMA
teacher or a stop-gradient.

Loss = lambda * SIGReg + (1 - lambda) * invariance, over V augmented views per image and
the projector's outputs z. Invariance: the mean squared distance of each view's z to the
mean z of its image's views. SIGReg (Sketched Isotropic Gaussian Regularization): z
projected on M random unit directions (redrawn each step); each 1-D projection's
empirical characteristic function is compared with the standard normal's by the
Epps-Pulley statistic, N * integral |ECF(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt over
[-t_max, t_max] (trapezoid on [0, t_max], doubled: the integrand is even), averaged over
directions and over views. Written here: no library implements SIGReg.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from selfsup import distributed
from selfsup.methods.base import InputSpec, PretrainingMethod
from selfsup.methods.registry import register_method
from selfsup.methods.views import AugmentationConfig, AugmentedViews, ViewAugmentation
from selfsup.models import VisionTransformerEncoder
from selfsup.params import StrictModel
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


class LeJEPAConfig(StrictModel):
    """Method-specific LeJEPA parameters."""

    # lambda: SIGReg's share of the loss, the method's one trade-off.
    sigreg_weight: float = Field(0.02, gt=0, lt=1)
    views: int = Field(4, ge=2)
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


def invariance(z: torch.Tensor) -> torch.Tensor:
    """z (V, N, K): the mean squared distance of each view's embedding to the mean
    embedding of its image's views (0 when the views agree)."""
    return (z - z.mean(dim=0, keepdim=True)).square().mean()


class LeJEPAInputs:
    """The V views of each image and this step's SIGReg directions (one draw per global
    step, shared by every micro-batch and process)."""

    def __init__(self, views: AugmentedViews, dim: int, directions: int) -> None:
        self.views = views
        self.dim = dim
        self.directions = directions

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        directions = unit_directions(self.dim, self.directions, draws.for_batch("sigreg"))
        return {**self.views(images, draws), "directions": directions}


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

    def input_sampler(self) -> LeJEPAInputs:
        views = AugmentedViews(self.augment, self.data.mean, self.data.std, self.config.views)
        return LeJEPAInputs(views, self.config.projector.out_dim, self.config.sigreg.directions)

    def embeddings(self, views: torch.Tensor) -> torch.Tensor:
        """Views (V, N, C, H, W) -> projector outputs (V, N, K), float32."""
        count, batch = views.shape[:2]
        pooled = self.encoder(views.flatten(0, 1)).mean(dim=1)
        return self.projector(pooled).float().view(count, batch, -1)

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
        z = self.embeddings(inputs["views"])
        weight = self.config.sigreg_weight
        return weight * self.sigreg_term(z, inputs["directions"]) + (1 - weight) * invariance(z)

    def examples(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        """Each image and its views (the first four)."""
        views = self.input_sampler().views(images, draws)["views"]
        return {"image": images, **{f"view {v + 1}": views[v] for v in range(min(4, len(views)))}}

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.encoder
