"""Augmented views of images, for the methods that learn by comparing several views of
one image (SimCLR, LeJEPA): torchvision v2 transforms with the papers' parametrization,
drawn per image from (seed, epoch, row) so a view never depends on batching."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.nn import functional as nnf
from torchvision.transforms.v2 import functional as F

from selfsup.crops import crop_box, resized_crops
from selfsup.params import FloatRange, StrictModel, check_range
from selfsup.randomness import SampleDraws


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


# ColorJitter's four adjustments, applied in a random order per view as torchvision does.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class ViewDraws:
    """The random choices of N views, one row each: crop box (top, left, height, width),
    mirror, whether colour jitter applies, the order of its adjustments and their factors
    (brightness, contrast, saturation, hue), grayscale, blur and its sigma."""

    boxes: np.ndarray  # (N, 4) int
    flip: np.ndarray  # (N,) bool
    jitter: np.ndarray  # (N,) bool
    order: np.ndarray  # (N, 4) int, a permutation of the adjustments per view
    factors: np.ndarray  # (N, 4) float, in the adjustments' order BRIGHTNESS..HUE
    grayscale: np.ndarray  # (N,) bool
    blur: np.ndarray  # (N,) bool
    sigma: np.ndarray  # (N,) float


@dataclass(frozen=True)
class ViewAugmentation:
    """SimCLR's view augmentation of [0, 1] images (C, H, W): RandomResizedCrop,
    horizontal flip, colour jitter with the paper's strength parametrization (p), random
    grayscale (colour images) and Gaussian blur, with torchvision's parameter rules.

    torchvision draws one set of parameters per call, so a batch would cost one call per
    view; here the parameters of every view are drawn first (`draw`) and the batch is
    transformed at once (`apply`), which gives what torchvision's functional ops give
    view by view with the same parameters (tests/methods/test_views.py).

    With `output_size` below the image size (LeJEPA's local views), each finished view is
    then downsampled to it, bilinearly with antialiasing."""

    config: AugmentationConfig
    image_size: int
    channels: int
    output_size: int | None = None  # None: the image size

    @property
    def blur_kernel(self) -> int:
        # About a tenth of the image side, as in the paper, and odd.
        return max(3, (self.image_size // 10) | 1)

    def draw_one(self, rng: np.random.Generator) -> tuple:
        """One view's choices, in a fixed order from `rng`."""
        config = self.config
        box = crop_box(rng, self.image_size, self.image_size, config.crop_scale, config.crop_ratio)
        flip = rng.random() < config.horizontal_flip_p
        jitter = rng.random() < config.colour_jitter.p
        order = rng.permutation(4)
        spread = 0.8 * config.colour_jitter.strength
        factors = [rng.uniform(max(0.0, 1 - spread), 1 + spread) for _ in range(3)]
        hue_spread = 0.2 * config.colour_jitter.strength
        factors.append(rng.uniform(-hue_spread, hue_spread))
        grayscale = rng.random() < config.grayscale_p
        blur = rng.random() < config.blur_p
        sigma = rng.uniform(*config.blur_sigma)
        return box, flip, jitter, order, factors, grayscale, blur, sigma

    def draw(self, rngs: list[np.random.Generator], count: int) -> ViewDraws:
        """`count` views of each image, image i's from `rngs[i]`, view-major: row
        v * len(rngs) + i is view v of image i."""
        per_image = [[self.draw_one(rng) for _ in range(count)] for rng in rngs]
        views = [per_image[i][v] for v in range(count) for i in range(len(rngs))]
        columns = list(zip(*views, strict=True))
        return ViewDraws(
            boxes=np.array(columns[0], dtype=np.int64).reshape(-1, 4),
            flip=np.array(columns[1], dtype=bool),
            jitter=np.array(columns[2], dtype=bool),
            order=np.array(columns[3], dtype=np.int64).reshape(-1, 4),
            factors=np.array(columns[4], dtype=np.float64).reshape(-1, 4),
            grayscale=np.array(columns[5], dtype=bool),
            blur=np.array(columns[6], dtype=bool),
            sigma=np.array(columns[7], dtype=np.float64),
        )

    def apply(self, pixels: torch.Tensor, draws: ViewDraws) -> torch.Tensor:
        """Views (N, C, H, W) of [0, 1] pixels (N, C, H, W), row n by `draws` row n."""
        out = resized_crops(pixels, torch.from_numpy(draws.boxes))
        flip = torch.from_numpy(draws.flip).to(out.device)[:, None, None, None]
        out = torch.where(flip, out.flip(-1), out)
        if self.config.colour_jitter.strength > 0:
            for position in range(4):
                for adjustment in range(4):
                    rows = draws.jitter & (draws.order[:, position] == adjustment)
                    self._adjust(out, np.flatnonzero(rows), adjustment, draws.factors)
        if self.channels == 3:
            rows = torch.from_numpy(np.flatnonzero(draws.grayscale)).to(out.device)
            out[rows] = F.rgb_to_grayscale(out[rows], num_output_channels=3)
        for row in np.flatnonzero(draws.blur):
            kernel = [self.blur_kernel, self.blur_kernel]
            out[row] = F.gaussian_blur(out[row], kernel, [float(draws.sigma[row])] * 2)
        size = self.output_size or self.image_size
        if size == self.image_size:
            return out
        return nnf.interpolate(out, size=(size, size), mode="bilinear", antialias=True)

    def _adjust(
        self, out: torch.Tensor, rows: np.ndarray, adjustment: int, factors: np.ndarray
    ) -> None:
        """One jitter adjustment of `out`'s `rows` in place, each by its own factor."""
        if len(rows) == 0 or (self.channels == 1 and adjustment in (SATURATION, HUE)):
            return  # saturation and hue are undefined without colour
        if adjustment == HUE:
            # Hue goes through HSV, which torchvision computes well; views that need it
            # (colour images only) are adjusted one by one.
            for row in rows:
                out[row] = F.adjust_hue(out[row], float(factors[row, HUE]))
            return
        index = torch.from_numpy(rows).to(out.device)
        images = out[index]
        factor = torch.from_numpy(factors[rows, adjustment]).to(images)[:, None, None, None]
        if adjustment == BRIGHTNESS:
            out[index] = (images * factor).clamp_(0, 1)
            return
        gray = F.rgb_to_grayscale(images) if self.channels == 3 else images
        if adjustment == CONTRAST:
            gray = gray.mean(dim=(-3, -2, -1), keepdim=True)
        out[index] = (images * factor + gray * (1 - factor)).clamp_(0, 1)


@dataclass(frozen=True)
class AugmentedViews:
    """`count` independent augmentations of each image, all a function of (seed, epoch,
    row): augmentation runs on [0, 1] pixels (colour jitter clamps to that range)."""

    augment: ViewAugmentation
    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int = 2
    # The inputs' key, which is also the random stream the views are drawn from, so
    # another set of views (LeJEPA's local ones) never shifts these.
    name: str = "views"

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        pixels = (images.float() * std + mean).clamp(0, 1)
        choices = self.augment.draw(draws.per_sample(self.name), self.count)
        views = self.augment.apply(pixels.repeat(self.count, 1, 1, 1), choices)
        views = views.view(self.count, len(pixels), *views.shape[1:])
        return {self.name: (views - mean) / std}
