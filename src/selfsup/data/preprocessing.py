"""Resizing and normalization of uint8 image arrays (N, H, W, C)."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF


def resize_images(images: np.ndarray, size: int, batch_size: int = 1024) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, size, size, C), bilinear with antialiasing."""
    if images.shape[1:3] == (size, size):
        return images.copy()
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
        resized = TF.resize(chunk, [size, size], antialias=True)
        out[start : start + batch_size] = resized.permute(0, 2, 3, 1).numpy()
    return out


def channel_statistics(images: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std in [0, 1] units, computed in float64."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = pixels.std(axis=0)
    return {"mean": pixels.mean(axis=0).tolist(), "std": np.maximum(std, 1e-8).tolist()}


def to_model_input(images: np.ndarray, normalization: dict) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) normalized with train statistics."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(normalization["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, -1, 1, 1)
    return (tensor / 255.0 - mean) / std
