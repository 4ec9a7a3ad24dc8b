"""Frozen features of the labelled (train/val/test) images: pretrained encoders and
the two baselines. Images are read batch by batch from the memory-mapped array."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from selfsup.config import EncoderConfig, FeatureConfig, MaskingConfig
from selfsup.data.chunked import rows_per_chunk
from selfsup.data.preprocessing import NormalizedImages
from selfsup.data.splits import evaluated_rows
from selfsup.evaluation import NoLabelledImagesError, encoder_features, no_labels_message
from selfsup.models import build_encoder
from selfsup.models.vit import encoder_from_checkpoint
from selfsup.pipelines.consistency import check_rows_match
from selfsup.training import resolve_device


def evaluated_images(
    model_input_images: np.ndarray, samples: pd.DataFrame, normalization: dict
) -> NormalizedImages:
    check_rows_match(model_input_images, samples)
    rows = evaluated_rows(samples)
    if not rows.any():
        raise NoLabelledImagesError(no_labels_message())
    return NormalizedImages(model_input_images, normalization, rows)


def _features_of(encoder: torch.nn.Module, images: NormalizedImages, features: FeatureConfig):
    encoder.to(resolve_device("auto"))
    return encoder_features(
        encoder, images, features.pooling, features.batch_size, features.grid_cells
    )


def pretrained_features(
    encoder: dict,
    model_input_images: np.ndarray,
    samples: pd.DataFrame,
    normalization: dict,
    features: FeatureConfig,
) -> np.ndarray:
    images = evaluated_images(model_input_images, samples, normalization)
    return _features_of(encoder_from_checkpoint(encoder), images, features)


def random_init_features(
    model_input_images: np.ndarray,
    samples: pd.DataFrame,
    normalization: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    features: FeatureConfig,
    seed: int,
) -> np.ndarray:
    """The same ViT with the weights every method starts from (same seed), untrained."""
    images = evaluated_images(model_input_images, samples, normalization)
    torch.manual_seed(seed)
    untrained = build_encoder(encoder, masking.image_size, masking.patch_size, images.shape[1])
    return _features_of(untrained, images, features)


def raw_pixel_features(
    model_input_images: np.ndarray, samples: pd.DataFrame, normalization: dict
) -> np.ndarray:
    """The normalized encoder input, flattened."""
    images = evaluated_images(model_input_images, samples, normalization)
    out = np.empty((len(images), int(np.prod(images.shape[1:]))), dtype=np.float32)
    step = rows_per_chunk(images.shape[1:], out.itemsize)
    for start in range(0, len(images), step):
        out[start : start + step] = images[start : start + step].flatten(1).numpy()
    return out
