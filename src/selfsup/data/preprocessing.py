"""Resizing and normalization of uint8 image arrays (N, H, W, C), in memory or
memory-mapped; large arrays are processed a chunk of rows at a time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from selfsup.data.chunked import iter_chunks, rows_per_chunk


def _resize_chunk(chunk: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)
    resized = TF.resize(tensor, [size, size], antialias=True)
    return resized.permute(0, 2, 3, 1).contiguous().numpy()


def resize_images(images: np.ndarray, size: int, batch_size: int = 1024) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, size, size, C) in memory, bilinear with antialiasing."""
    if images.shape[1:3] == (size, size):
        return np.array(images)
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for start in range(0, images.shape[0], batch_size):
        out[start : start + batch_size] = _resize_chunk(images[start : start + batch_size], size)
    return out


class ResizedImages:
    """`resize_images` done lazily, chunk by chunk, for `write_npy` to stream to disk."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        self.images = images
        self.size = size
        self.shape = (images.shape[0], size, size, images.shape[3])
        self.dtype = np.dtype(np.uint8)

    def chunks(self) -> Iterator[np.ndarray]:
        for chunk in iter_chunks(self.images):
            yield _resize_chunk(chunk, self.size)


def channel_statistics(
    images: np.ndarray, rows: np.ndarray | None = None
) -> dict[str, list[float]]:
    """Per-channel mean and std in [0, 1] units of `images[rows]` (all rows by default).

    Sums of uint8 values and of their squares are exact in integers, so the statistics
    do not depend on chunking: std = sqrt(n * sum(x^2) - sum(x)^2) / (255 n)."""
    if rows is None:
        selected = np.arange(images.shape[0])
    else:
        selected = np.flatnonzero(rows) if rows.dtype == bool else rows
    channels = images.shape[-1]
    total = np.zeros(channels, dtype=object)  # Python ints: no overflow
    squares = np.zeros(channels, dtype=object)
    count = 0
    # Chunks sized for the int64 copy below, not for the uint8 rows.
    step = rows_per_chunk(images.shape[1:], np.dtype(np.int64).itemsize)
    for start in range(0, len(selected), step):
        chunk = images[selected[start : start + step]]
        pixels = chunk.reshape(-1, channels).astype(np.int64)
        total += pixels.sum(axis=0).astype(object)
        squares += (pixels * pixels).sum(axis=0).astype(object)
        count += pixels.shape[0]
    if count == 0:
        raise ValueError("no images to compute normalization statistics from")
    mean = [float(s) / (255.0 * count) for s in total]
    variance = [max(0, count * q - s * s) for s, q in zip(total, squares, strict=True)]
    std = [float(np.sqrt(float(v))) / (255.0 * count) for v in variance]
    return {"mean": mean, "std": [max(s, 1e-8) for s in std]}


def _normalize(uint8_nhwc: torch.Tensor, normalization: dict) -> torch.Tensor:
    mean = torch.tensor(normalization["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, -1, 1, 1)
    return (uint8_nhwc.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def to_model_input(images: np.ndarray, normalization: dict) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) normalized with train statistics."""
    return _normalize(torch.from_numpy(np.ascontiguousarray(images)), normalization)


def to_pixels(batch: torch.Tensor, normalization: dict) -> np.ndarray:
    """float (N, C, H, W) normalized with `normalization` -> uint8 (N, H, W, C): the
    inverse of `to_model_input`, clipped to [0, 255] (reconstructions overshoot)."""
    mean = torch.tensor(normalization["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, -1, 1, 1)
    pixels = ((batch * std + mean) * 255.0).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class NormalizedImages:
    """Rows of a uint8 (N, H, W, C) array, usually memory-mapped, read as normalized
    float32 (B, C, H, W) batches on demand: `images[indices]`. Only the batch is ever
    in memory, so a dataset larger than RAM can be trained on and embedded."""

    def __init__(
        self, images: np.ndarray, normalization: dict, rows: np.ndarray | None = None
    ) -> None:
        self.images = images
        self.normalization = normalization
        self.rows = np.arange(images.shape[0]) if rows is None else np.flatnonzero(rows)
        height, width, channels = images.shape[1:]
        self.shape = (len(self.rows), channels, height, width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        chunk = self.images[self.rows[index]]
        return to_model_input(chunk, self.normalization)
