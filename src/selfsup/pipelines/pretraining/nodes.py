"""Pretrain one method on the train split; the method is chosen by parameters."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import wraps

import numpy as np
import pandas as pd
from dvclive import Live
from matplotlib.figure import Figure
from timm.models.vision_transformer import VisionTransformer

from selfsup import distributed
from selfsup.checkpoints import TrainingCheckpoints
from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig
from selfsup.data.fingerprint import images_fingerprint
from selfsup.data.splits import pretraining_rows
from selfsup.models.timm_export import timm_encoder
from selfsup.pipelines.consistency import check_rows_match
from selfsup.plots import plot_examples, plot_training_history
from selfsup.pretraining import pretrain_encoder


def pretrain(
    model_input_images: np.ndarray,
    samples: pd.DataFrame,
    normalization: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    pretraining: PretrainingConfig,
    seed: int,
    live_dir: str | None = None,
    checkpoint_dir: str | None = None,
) -> tuple[dict, pd.DataFrame, Figure]:
    """Train on the pretraining rows (labels unused), read batch by batch from the
    (memory-mapped) images; return the evaluation encoder, the history and the
    method's example picture (`selfsup.pretraining.method_examples`).

    With `live_dir`, every step's loss and schedules are also logged there with dvclive
    as training goes (the DVC stage declares them as plots). With `checkpoint_dir`,
    training checkpoints go there (`training.checkpoint_every`) and `training.resume`
    continues from the newest one written by a run with the same settings."""
    check_rows_match(model_input_images, samples)
    # dvcyaml=False: dvc.yaml declares the plots; save_dvc_exp=False: `dvc exp run`,
    # not the logger, records experiments.
    # Under torchrun only rank 0 logs and checkpoints; the others train their share.
    live_dir = live_dir if distributed.is_main_process() else None
    live = Live(live_dir, dvcyaml=False, save_dvc_exp=False) if live_dir else nullcontext()
    checkpoints = None
    if checkpoint_dir:
        checkpoints = TrainingCheckpoints(
            checkpoint_dir,
            pretraining.training.checkpoint_every,
            pretraining.training.keep_checkpoints,
            _run_identity(
                pretraining,
                encoder,
                masking,
                seed,
                int(pretraining_rows(samples).sum()),
                _training_data_fingerprint(model_input_images, samples),
            ),
        )
    with live:
        result = pretrain_encoder(
            model_input_images,
            samples,
            normalization,
            encoder,
            masking,
            pretraining,
            seed,
            on_step=live_logger(live) if live_dir else None,
            checkpoints=checkpoints,
        )
    figure = plot_examples(result.examples, result.examples_title)
    return result.checkpoint, result.history, figure


def pretrain_writing_to(
    live_dir: str, checkpoint_dir: str
) -> Callable[..., tuple[dict, pd.DataFrame, Figure]]:
    """`pretrain` with its dvclive and checkpoint folders bound. Unlike functools.partial,
    the result keeps `pretrain`'s name and type hints, which Kedro needs to validate
    parameters."""

    @wraps(pretrain)
    def pretrain_logged(*args, **kwargs):
        return pretrain(*args, **kwargs, live_dir=live_dir, checkpoint_dir=checkpoint_dir)

    return pretrain_logged


# Settings that do not change what training computes: a run may resume across them.
_RESUMABLE_ACROSS = {
    "resume",
    "checkpoint_every",
    "keep_checkpoints",
    "num_threads",
    "device",
    "loader_workers",
    "accumulation_steps",
    "compile",
}
# Masking settings that only shape the reports (mask statistics, preview), not training.
_REPORT_ONLY_MASKING = {"stats_num_masks", "preview_images"}
# Bumped when what a checkpoint means changes, so an older one is refused, not misread.
CHECKPOINT_FORMAT = 4


def _run_identity(
    pretraining: PretrainingConfig,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    seed: int,
    num_images: int,
    data_fingerprint: str = "",
) -> dict:
    """What a checkpoint must share with this run for the run to resume from it."""
    training = pretraining.training.model_dump(mode="json", exclude=_RESUMABLE_ACROSS)
    # Monitors only read the weights: not part of the identity.
    return {
        "format": CHECKPOINT_FORMAT,
        "method": pretraining.method,
        "hyperparameters": pretraining.hyperparameters.model_dump(mode="json"),
        "training": training,
        "encoder": encoder.model_dump(mode="json"),
        "masking": masking.model_dump(mode="json", exclude=_REPORT_ONLY_MASKING),
        "seed": seed,
        "num_images": num_images,
        "data_fingerprint": data_fingerprint,
    }


def _training_data_fingerprint(model_input_images: np.ndarray, samples: pd.DataFrame) -> str:
    rows = pretraining_rows(samples)
    return images_fingerprint(model_input_images, rows, samples["path"][rows].astype(str))


# Per-step columns of the history that are bookkeeping, not curves.
_NOT_CURVES = {"step", "epoch", "images_seen", "elapsed_s"}


# Steps between two dvclive syncs (summary, report, DVC Studio). Each sync re-reads every
# curve logged so far, so a sync per step would cost in proportion to the square of the
# steps (benchmarks/live_logging.py).
LIVE_SYNC_EVERY_STEPS = 50


def live_logger(live: Live) -> Callable[[dict], None]:
    """Logs each history row as dvclive step `row["step"]`; the curves' files grow
    every step, the summary and DVC Studio every `LIVE_SYNC_EVERY_STEPS` steps and
    when the run ends."""

    def log(row: dict) -> None:
        live.step = row["step"]
        for name, value in row.items():
            if name not in _NOT_CURVES:
                live.log_metric(f"train/{name}", value)
        if (row["step"] + 1) % LIVE_SYNC_EVERY_STEPS == 0:
            live.sync()

    return log


def plot_history(training_history: pd.DataFrame, pretraining: PretrainingConfig) -> Figure:
    return plot_training_history(training_history, pretraining.method)


def export_to_timm(encoder: dict, pretraining: PretrainingConfig) -> VisionTransformer:
    """The encoder as a timm model, tagged with its method, for use outside selfsup."""
    return timm_encoder(encoder, name=f"selfsup-{pretraining.method}")
