"""Pretrain one method on the train split; the method is chosen by parameters."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import wraps

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from matplotlib.figure import Figure

from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig
from selfsup.data.preprocessing import NormalizedImages
from selfsup.data.splits import pretraining_rows
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
    live_dir: str | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Train on the pretraining rows (labels unused), read batch by batch from the
    (memory-mapped) images; return the evaluation encoder and history.

    With `live_dir`, every step's loss and schedules are also logged there with dvclive
    as training goes (the DVC stage declares them as plots)."""
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
    # dvcyaml=False: dvc.yaml declares the plots; save_dvc_exp=False: `dvc exp run`,
    # not the logger, records experiments.
    live = Live(live_dir, dvcyaml=False, save_dvc_exp=False) if live_dir else nullcontext()
    with live:
        history = train(
            method,
            train_images,
            pretraining.training,
            seed,
            description=pretraining.method,
            on_step=_live_logger(live) if live_dir else None,
        )
    checkpoint = encoder_checkpoint(
        method.evaluation_encoder(), encoder, masking.image_size, masking.patch_size
    )
    return checkpoint, history


def pretrain_logging_to(live_dir: str) -> Callable[..., tuple[dict, pd.DataFrame]]:
    """`pretrain` with its dvclive folder bound. Unlike functools.partial, the result
    keeps `pretrain`'s name and type hints, which Kedro needs to validate parameters."""

    @wraps(pretrain)
    def pretrain_logged(*args, **kwargs):
        return pretrain(*args, **kwargs, live_dir=live_dir)

    return pretrain_logged


# Per-step columns of the history that are bookkeeping, not curves.
_NOT_CURVES = {"step", "epoch", "images_seen", "elapsed_s"}


def _live_logger(live: Live) -> Callable[[dict], None]:
    def log(row: dict) -> None:
        for name, value in row.items():
            if name not in _NOT_CURVES:
                live.log_metric(f"train/{name}", value)
        live.next_step()

    return log


def plot_history(training_history: pd.DataFrame, pretraining: PretrainingConfig) -> Figure:
    return plot_training_history(training_history, pretraining.method)
