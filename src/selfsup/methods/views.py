"""Augmented views of images, for the methods that learn by comparing several views of
one image (SimCLR, LeJEPA): torchvision v2 transforms with the papers' parametrization,
drawn per image from (seed, epoch, row) so a view never depends on batching."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field, field_validator
from torchvision.transforms import v2

from selfsup.params import FloatRange, StrictModel, check_range
from selfsup.randomness import SampleDraws, seeded_torch_draws


class ColourJitterConfig(StrictModel):
    """torchvision ColorJitter with the paper's strength parametrization: brightness,
    contrast, saturation 0.8*s and hue 0.2*s, applied with probability p. On
    single-channel images only brightness and contrast apply."""

    strength: float = Field(0.5, ge=0)
    p: float = Field(0.8, ge=0, le=1)


class AugmentationConfig(StrictModel):
    """Per-view augmentations (torchvision v2), each configurable; SimCLR's paper defaults
    except blur, which is off for small images as in the paper's CIFAR-10 setup."""

    crop_scale: FloatRange = (0.08, 1.0)
    crop_ratio: FloatRange = (0.75, 4 / 3)
    horizontal_flip_p: float = Field(0.5, ge=0, le=1)
    colour_jitter: ColourJitterConfig = ColourJitterConfig()
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.0, ge=0, le=1)
    blur_sigma: FloatRange = (0.1, 2.0)

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("augmentations.crop_scale", value, 0.0, 1.0)

    @field_validator("crop_ratio", "blur_sigma")
    @classmethod
    def _positive_range(cls, value: FloatRange, info) -> FloatRange:
        return check_range(f"augmentations.{info.field_name}", value, 0.0, math.inf, high_open=True)


def view_transform(config: AugmentationConfig, image_size: int, channels: int) -> v2.Compose:
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


@dataclass(frozen=True)
class AugmentedViews:
    """`count` independent augmentations of each image, all a function of (seed, epoch,
    row): augmentation runs on [0, 1] pixels (colour jitter clamps to that range), one
    image at a time because torchvision draws one set of parameters per call."""

    augment: v2.Compose
    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int = 2

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        pixels = (images.float() * std + mean).clamp(0, 1)
        out = torch.empty((self.count, *pixels.shape), dtype=pixels.dtype, device=pixels.device)
        with seeded_torch_draws() as generator:
            for i, (image, seed) in enumerate(zip(pixels, draws.torch_seeds("views"), strict=True)):
                generator.manual_seed(seed)
                for view in range(self.count):
                    out[view, i] = self.augment(image)
        return {"views": (out - mean) / std}
