"""Random resized crops: torchvision's RandomResizedCrop rule, drawn from a given
generator, and applied to a whole batch at once."""

from __future__ import annotations

import math

import numpy as np
import torch

# torchvision's RandomResizedCrop defaults: aspect ratios and draws before the fallback.
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10


def crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of one RandomResizedCrop: torchvision's rule (an area
    fraction uniform in `scale`, a log-uniform aspect ratio in `ratio`, up to 10 draws,
    then a centre crop), drawn from `rng` instead of torch's global generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _bilinear_taps(
    starts: torch.Tensor, lengths: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis, for each box (start, length) stretched to `size` outputs: the two
    source indices each output blends and the weight of the second (half-pixel centres,
    edges repeated, as torch's bilinear resize without corner alignment)."""
    outputs = torch.arange(size, dtype=torch.float32, device=starts.device)
    first = starts[:, None].float()
    last = (starts + lengths - 1)[:, None].float()
    source = first + (outputs + 0.5) * (lengths[:, None].float() / size) - 0.5
    source = torch.minimum(torch.maximum(source, first), last)
    low = source.floor()
    high = torch.minimum(low + 1, last)
    return low.long(), high.long(), source - low


def resized_crops(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box (top, left, height, width), no larger than the image, resized
    bilinearly back to the image's size, the whole batch at once. Equals torchvision's
    `resized_crop` with antialiasing (which changes nothing when enlarging) image by
    image, to float rounding; written here because torchvision takes one box per call."""
    batch, channels, height, width = images.shape
    boxes = boxes.to(images.device)
    top, bottom, row_weight = _bilinear_taps(boxes[:, 0], boxes[:, 2], height)
    left, right, column_weight = _bilinear_taps(boxes[:, 1], boxes[:, 3], width)

    def rows(index: torch.Tensor) -> torch.Tensor:
        return images.gather(2, index[:, None, :, None].expand(batch, channels, height, width))

    row_weight = row_weight[:, None, :, None].to(images.dtype)
    blended = torch.lerp(rows(top), rows(bottom), row_weight)

    def columns(index: torch.Tensor) -> torch.Tensor:
        return blended.gather(3, index[:, None, None, :].expand(batch, channels, height, width))

    return torch.lerp(
        columns(left), columns(right), column_weight[:, None, None, :].to(images.dtype)
    )
