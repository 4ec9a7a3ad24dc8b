"""Pretrain one method on the train split; the method is chosen by parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig
from selfsup.data.preprocessing import to_model_input
from selfsup.methods import build_method
from selfsup.models.vit import encoder_checkpoint
from selfsup.plots import plot_training_history
from selfsup.training import train


def pretrain(
    model_input_images: np.ndarray,
    samples: pd.DataFrame,
    normalization: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    pretraining: PretrainingConfig,
    seed: int,
) -> tuple[dict, pd.DataFrame]:
    """Train on unlabelled train-split images; return the evaluation encoder and history."""
    train_images = model_input_images[samples["split"].to_numpy() == "train"]
    torch.manual_seed(seed)
    method = build_method(
        pretraining.method,
        pretraining.hyperparameters,
        encoder,
        masking,
        in_chans=train_images.shape[-1],
        normalization=normalization,
    )
    history = train(
        method,
        to_model_input(train_images, normalization),
        pretraining.training,
        seed,
        description=pretraining.method,
    )
    checkpoint = encoder_checkpoint(
        method.evaluation_encoder(), encoder, masking.image_size, masking.patch_size
    )
    return checkpoint, history


def plot_history(training_history: pd.DataFrame, pretraining: PretrainingConfig) -> Figure:
    return plot_training_history(training_history, pretraining.method)
