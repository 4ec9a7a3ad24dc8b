"""Pretrain one method on a dataset's pretraining rows and return its evaluation encoder:
the whole pretraining stage as plain Python (no Kedro, no dvclive), so that scripts and
other machines can run exactly what the pipeline runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, SerializeAsAny, ValidationError, model_validator

from selfsup.checkpoints import TrainingCheckpoints
from selfsup.data.preprocessing import NormalizedImages, to_pixels
from selfsup.data.splits import pretraining_rows
from selfsup.masks import MaskingConfig
from selfsup.methods import METHODS, PretrainingMethod, build_method
from selfsup.models.vit import EncoderConfig, encoder_checkpoint
from selfsup.monitors import MonitorConfig, build_monitor
from selfsup.params import StrictModel
from selfsup.randomness import SampleDraws
from selfsup.training import TrainingConfig, train


class PretrainingConfig(StrictModel):
    """One pretraining run: which method, its hyperparameters and the training recipe.

    `hyperparameters` arrives as a mapping and is validated once, into the method's own
    parameter model (`selfsup.methods.METHODS[method].config_class`), so a new method
    brings its parameters without changes here.
    """

    method: str
    hyperparameters: SerializeAsAny[BaseModel]
    training: TrainingConfig = TrainingConfig()
    monitors: MonitorConfig = MonitorConfig()

    @model_validator(mode="before")
    @classmethod
    def _method_hyperparameters(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        method = data.get("method")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        config_class = METHODS[method].config_class
        given = data.get("hyperparameters") or {}
        if isinstance(given, config_class):
            return data
        if isinstance(given, BaseModel):
            given = given.model_dump()
        try:
            hyperparameters = config_class.model_validate(given)
        except ValidationError as error:
            raise ValueError(f"{method} hyperparameters: {error}") from None
        return {**data, "hyperparameters": hyperparameters}


# Images in each method's example picture (data/08_reporting/<method>/examples.png).
EXAMPLE_IMAGES = 8


class PretrainingResult(NamedTuple):
    """The evaluation encoder's checkpoint, the per-step history and the example
    pictures (`method_examples`) with their title."""

    checkpoint: dict
    history: pd.DataFrame
    examples: dict[str, np.ndarray]
    examples_title: str


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
) -> PretrainingResult:
    """Train on the pretraining rows of `samples` (labels unused), read batch by batch
    from the (memory-mapped) uint8 images; return the evaluation encoder's checkpoint
    (`selfsup.models.vit.encoder_from_checkpoint` rebuilds it), the per-step history
    and the method's example pictures.

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
        method.evaluation_encoder(), encoder, masking.image_size, masking.patch_size, normalization
    )
    rows = example_rows(samples)
    examples = method_examples(
        method, NormalizedImages(model_input_images, normalization), rows, seed
    )
    return PretrainingResult(checkpoint, history, examples, method.examples_title)


def example_rows(samples: pd.DataFrame, count: int = EXAMPLE_IMAGES) -> np.ndarray:
    """The images a method's example picture shows: the first `count` val images (never
    trained on), or the first pretraining images when no image is labelled."""
    val = np.flatnonzero(samples["split"].to_numpy() == "val")
    rows = val if len(val) else np.flatnonzero(pretraining_rows(samples))
    return rows[:count]


def method_examples(
    method: PretrainingMethod, images: NormalizedImages, rows: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    """The method's example pictures (`PretrainingMethod.examples`) of these rows, as
    uint8 (B, H, W, C) arrays in [0, 255]; masks and views drawn as in epoch 0. Runs
    after training and draws from its own generators, so training is unaffected."""
    device = next(method.parameters()).device
    was_training = method.training
    method.eval()
    with torch.no_grad():
        pictures = method.examples(images[rows].to(device), SampleDraws(seed, 0, 0, rows))
    method.train(was_training)
    return {
        name: to_pixels(batch.float().cpu(), images.normalization)
        for name, batch in pictures.items()
    }
