"""Pretrain one method on a dataset's pretraining rows and return its evaluation encoder:
the whole pretraining stage as plain Python (no Kedro, no dvclive), so that scripts and
other machines can run exactly what the pipeline runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from selfsup.checkpoints import TrainingCheckpoints
from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig
from selfsup.data.preprocessing import NormalizedImages
from selfsup.data.splits import pretraining_rows
from selfsup.methods import build_method
from selfsup.models.vit import encoder_checkpoint
from selfsup.monitors import build_monitor
from selfsup.training import train


def pretrain_encoder(
    model_input_images: np.ndarray,
    samples: pd.DataFrame,
    normalization: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    pretraining: PretrainingConfig,
    seed: int,
    on_step: Callable[[dict], None] | None = None,
    checkpoints: TrainingCheckpoints | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Train on the pretraining rows of `samples` (labels unused), read batch by batch
    from the (memory-mapped) uint8 images; return the evaluation encoder's checkpoint
    (`selfsup.models.vit.encoder_from_checkpoint` rebuilds it) and the per-step history.

    `on_step` receives each history row as it is recorded; `checkpoints` saves training
    checkpoints and resumes from them (`selfsup.checkpoints`)."""
    train_images = NormalizedImages(model_input_images, normalization, pretraining_rows(samples))
    torch.manual_seed(seed)
    method = build_method(
        pretraining.method,
        pretraining.hyperparameters,
        encoder,
        masking,
        in_chans=train_images.shape[1],
        normalization=normalization,
    )
    monitor = build_monitor(
        model_input_images,
        samples,
        normalization,
        pretraining.monitors,
        seed,
        pretraining.method,
    )
    history = train(
        method,
        train_images,
        pretraining.training,
        seed,
        description=pretraining.method,
        on_step=on_step,
        checkpoints=checkpoints,
        monitor=monitor,
    )
    checkpoint = encoder_checkpoint(
        method.evaluation_encoder(), encoder, masking.image_size, masking.patch_size
    )
    return checkpoint, history
