"""SimCLR (Chen et al., 2020): agree on two augmented views of one image (NT-Xent)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torchvision.transforms import v2

from selfsup.config import SimCLRAugmentationConfig, SimCLRConfig
from selfsup.methods.base import InputSpec, PretrainingMethod
from selfsup.models import VisionTransformerEncoder


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N views: view i's positive is its partner, its negatives are
    the other 2N - 2 views; similarities are cosine, divided by `temperature`; the loss
    is averaged over all 2N anchors."""
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = z @ z.T / temperature
    # A view is never its own negative.
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -torch.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def view_transform(config: SimCLRAugmentationConfig, image_size: int, channels: int) -> v2.Compose:
    """One random view of a [0, 1] image (C, H, W), built from torchvision v2."""
    s = config.colour_jitter.strength
    if channels == 3:
        jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    else:
        # Saturation and hue are undefined without colour.
        jitter = v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s)
    steps = [
        v2.RandomResizedCrop(
            image_size, scale=config.crop_scale, ratio=config.crop_ratio, antialias=True
        ),
        v2.RandomHorizontalFlip(config.horizontal_flip_p),
        v2.RandomApply([jitter], p=config.colour_jitter.p),
    ]
    if channels == 3:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    if config.blur_p > 0:
        # Kernel about a tenth of the image side, as in the paper, and odd.
        kernel = max(3, (image_size // 10) | 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, config.blur_sigma)], p=config.blur_p))
    return v2.Compose(steps)


class SimCLR(PretrainingMethod):
    name = "simclr"
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
        self.augment = view_transform(config.augmentations, data.masking.image_size, data.channels)
        self.register_buffer("mean", torch.tensor(data.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(1, -1, 1, 1), persistent=False)

    def views(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Two independent augmentations of each normalized image: (2, B, C, H, W).

        Augmentation runs on [0, 1] pixels (colour jitter clamps to that range), one
        image at a time because torchvision draws one set of parameters per call.
        """
        pixels = (images.float() * self.std + self.mean).clamp(0, 1)
        out = torch.empty((2, *pixels.shape), dtype=pixels.dtype, device=pixels.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            for view in range(2):
                for i, image in enumerate(pixels):
                    out[view, i] = self.augment(image)
        return (out - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The probe's feature h: average-pooled last-block tokens."""
        return self.encoder(images).mean(dim=1)

    def training_loss(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        view_a, view_b = self.views(images, rng)
        z = self.projection_head(self.embed(torch.cat([view_a, view_b])))
        z_a, z_b = z.float().chunk(2)
        return nt_xent_loss(z_a, z_b, self.config.temperature)

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.encoder
