"""Resize, normalization statistics, patch grid, and the mask sampler's report."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selfsup.config import MaskingConfig
from selfsup.data.chunked import ChunkedImages
from selfsup.data.preprocessing import ResizedImages, channel_statistics
from selfsup.data.splits import pretraining_rows
from selfsup.masks import build_mask_sampler, measure_mask_statistics
from selfsup.pipelines.consistency import check_rows_match
from selfsup.plots import plot_mask_preview


def prepare_model_input(images: np.ndarray, masking: MaskingConfig) -> np.ndarray | ChunkedImages:
    """Images at `masking.image_size`; resized lazily, chunk by chunk, as they are saved."""
    if images.shape[1:3] == (masking.image_size, masking.image_size):
        return images
    return ResizedImages(images, masking.image_size)


def compute_normalization(model_input_images: np.ndarray, samples: pd.DataFrame) -> dict:
    """Per-channel mean and std of the pretraining images only (for a labelled source,
    its train split: no val/test leakage)."""
    check_rows_match(model_input_images, samples)
    return channel_statistics(model_input_images, pretraining_rows(samples))


def describe_patch_grid(model_input_images: np.ndarray, masking: MaskingConfig) -> dict:
    return {
        "image_size": masking.image_size,
        "patch_size": masking.patch_size,
        "channels": int(model_input_images.shape[-1]),
        "grid": [masking.grid_size, masking.grid_size],
        "num_patches": masking.num_patches,
        "patch_dim": masking.patch_size**2 * int(model_input_images.shape[-1]),
    }


def mask_statistics(masking: MaskingConfig, seed: int) -> dict:
    """Statistics of the masks of `masking.strategy`, the one I-JEPA trains with."""
    return measure_mask_statistics(build_mask_sampler(masking), masking.stats_num_masks, seed)


def mask_preview(model_input_images: np.ndarray, masking: MaskingConfig, seed: int) -> Figure:
    rng = np.random.default_rng(seed)
    count = min(masking.preview_images, len(model_input_images))
    chosen = rng.choice(len(model_input_images), size=count, replace=False)
    masks = build_mask_sampler(masking).sample(count, rng)
    return plot_mask_preview(
        model_input_images[chosen], masks, masking.grid_size, masking.patch_size, masking.strategy
    )
