"""Frozen features for every split: pretrained encoders and the two baselines."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.config import EncoderConfig, FeatureConfig, MaskingConfig
from selfsup.data.preprocessing import to_model_input
from selfsup.evaluation import encoder_features
from selfsup.models import build_encoder
from selfsup.models.vit import encoder_from_checkpoint
from selfsup.training import resolve_device


def _features_of(
    encoder: torch.nn.Module, images: np.ndarray, normalization: dict, features: FeatureConfig
) -> np.ndarray:
    encoder.to(resolve_device("auto"))
    return encoder_features(
        encoder, to_model_input(images, normalization), features.pooling, features.batch_size
    )


def pretrained_features(
    encoder: dict, model_input_images: np.ndarray, normalization: dict, features: FeatureConfig
) -> np.ndarray:
    return _features_of(
        encoder_from_checkpoint(encoder), model_input_images, normalization, features
    )


def random_init_features(
    model_input_images: np.ndarray,
    normalization: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    features: FeatureConfig,
    seed: int,
) -> np.ndarray:
    """The same ViT with the weights every method starts from (same seed), untrained."""
    torch.manual_seed(seed)
    untrained = build_encoder(
        encoder, masking.image_size, masking.patch_size, model_input_images.shape[-1]
    )
    return _features_of(untrained, model_input_images, normalization, features)


def raw_pixel_features(model_input_images: np.ndarray, normalization: dict) -> np.ndarray:
    """The normalized encoder input, flattened."""
    return to_model_input(model_input_images, normalization).flatten(1).numpy()
