"""SimCLR (Chen et al., 2020): agree on two augmented views of one image (NT-Xent)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import Mlp
from torch import nn

from selfsup import distributed
from selfsup.methods.base import InputSpec, PretrainingMethod
from selfsup.methods.registry import register_method
from selfsup.methods.views import AugmentationConfig, AugmentedViews, ViewAugmentation
from selfsup.models import VisionTransformerEncoder
from selfsup.models.vit import init_weights
from selfsup.params import StrictModel
from selfsup.randomness import SampleDraws


class ProjectionHeadConfig(StrictModel):
    """SimCLR's projection head g: a 2-layer MLP with ReLU (the paper's v1 head)."""

    hidden_dim: int = Field(512, ge=1)
    out_dim: int = Field(128, ge=1)


# SimCLR's name for the shared view augmentations (`selfsup.methods.views`).
SimCLRAugmentationConfig = AugmentationConfig


class SimCLRConfig(StrictModel):
    """Method-specific SimCLR parameters."""

    temperature: float = Field(0.2, gt=0)
    projection_head: ProjectionHeadConfig = ProjectionHeadConfig()
    augmentations: AugmentationConfig = AugmentationConfig()


# Runs eagerly under torch.compile: Triton 3.6 (torch 2.11) failed to compile the fused
# cross-entropy of these logits on an H200 ("PassManager::run failed"), and the loss is a
# small part of the step.
@torch.compiler.disable
def nt_xent_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    temperature: float,
    all_a: torch.Tensor | None = None,
    all_b: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """NT-Xent over 2N views: view i's positive is its partner, its negatives are the
    other 2N - 2 views; similarities are cosine, divided by `temperature`; the loss is
    averaged over the anchors.

    Data-parallel: `z_a`, `z_b` are this rank's n anchors of each view and `all_a`,
    `all_b` every rank's (N each, gathered with gradients), this rank's rows starting
    at `offset`. The mean over ranks of these losses is the loss of the global batch.
    """
    if all_a is None or all_b is None:
        all_a, all_b = z_a, z_b
    n, total = z_a.shape[0], all_a.shape[0]
    anchors = F.normalize(torch.cat([z_a, z_b]), dim=1)
    candidates = F.normalize(torch.cat([all_a, all_b]), dim=1)
    logits = anchors @ candidates.T / temperature
    rows = torch.arange(n, device=z_a.device) + offset
    own = torch.cat([rows, rows + total])
    # A view is never its own negative.
    anchor_rows = torch.arange(2 * n, device=z_a.device)
    logits = logits.index_put((anchor_rows, own), logits.new_tensor(-torch.inf))
    partner = torch.cat([rows + total, rows])
    return F.cross_entropy(logits, partner)


@register_method
class SimCLR(PretrainingMethod):
    name = "simclr"
    examples_title = "SimCLR: val images and the two augmented views it pulls together"
    config_class = SimCLRConfig

    def __init__(
        self, config: SimCLRConfig, encoder: VisionTransformerEncoder, data: InputSpec
    ) -> None:
        super().__init__(config, encoder, data)
        self.config = config
        self.encoder = encoder
        head = config.projection_head
        self.projection_head = Mlp(
            encoder.embed_dim, head.hidden_dim, head.out_dim, act_layer=nn.ReLU
        )
        if encoder.weight_init == "xavier":
            # trunc_normal keeps the head at PyTorch's default, as it always was.
            self.projection_head.apply(partial(init_weights, scheme="xavier"))
        self.data = data
        self.augment = ViewAugmentation(
            config.augmentations, data.masking.image_size, data.channels
        )

    def input_sampler(self) -> AugmentedViews:
        return AugmentedViews(self.augment, self.data.mean, self.data.std)

    def views(self, images: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        """Two augmentations of each normalized image: (2, B, C, H, W)."""
        return self.input_sampler()(images, draws)["views"]

    def examples(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        """Each image and the two views the loss pulls together."""
        first, second = self.views(images, draws)
        return {"image": images, "view 1": first, "view 2": second}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The probe's feature h: average-pooled last-block tokens."""
        return self.encoder(images).mean(dim=1)

    def training_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        view_a, view_b = inputs["views"]
        z = self.projection_head(self.embed(torch.cat([view_a, view_b])))
        z_a, z_b = z.float().chunk(2)
        if not distributed.is_running():
            return nt_xent_loss(z_a, z_b, self.config.temperature)
        # Every rank's views are negatives too, as in one process on the global batch;
        # gathering with gradients sends each rank's share of the gradient back to it.
        all_a, all_b = (
            distributed.gather_with_gradients(z_a),
            distributed.gather_with_gradients(z_b),
        )
        offset = distributed.rank() * z_a.shape[0]
        return nt_xent_loss(z_a, z_b, self.config.temperature, all_a, all_b, offset)

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.encoder
