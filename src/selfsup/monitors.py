"""What a training run shows about its representation, not only its loss.

Every `every_steps` steps, on a fixed held-out batch: RankMe and the per-dimension spread
of the normalized features of the evaluation encoder, plus what the method adds (I-JEPA:
the cosine similarity of its predictions to their targets). Every `knn_every_epochs`
epochs: kNN accuracy on the val split, computed as the evaluation pipeline computes it. A
collapse rule turns a run of low RankMe or spread into a warning or a stop.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from selfsup.data.preprocessing import NormalizedImages
from selfsup.data.splits import evaluated_rows, pretraining_rows
from selfsup.evaluation import encoder_features, knn_protocol
from selfsup.methods.base import PretrainingMethod
from selfsup.params import StrictModel


class CollapseConfig(StrictModel):
    """When the monitors call a representation collapsed: RankMe below `rankme_fraction`
    of the feature dimension, or the normalized feature std below `std_fraction` /
    sqrt(dimension), for `patience` checks in a row; then warn or stop the run."""

    rankme_fraction: float = Field(0.03, ge=0, le=1)
    std_fraction: float = Field(0.01, ge=0)
    patience: int = Field(3, ge=1)
    on_collapse: Literal["warn", "stop"] = "warn"


class MonitorConfig(StrictModel):
    """Representation monitors during pretraining (`selfsup.monitors`)."""

    # RankMe, normalized std (and I-JEPA's prediction cosine) on a held-out batch every
    # this many steps (null: never).
    every_steps: int | None = Field(20, ge=1)
    held_out_images: int = Field(256, ge=2)
    # kNN accuracy on the val split every this many epochs (null: never), with the
    # evaluation pipeline's protocol; the train split is subsampled to at most
    # knn_max_train_images.
    knn_every_epochs: int | None = Field(5, ge=1)
    knn_k: int = Field(20, ge=1)
    knn_max_train_images: int = Field(10000, ge=1)
    collapse: CollapseConfig = CollapseConfig()


logger = logging.getLogger(__name__)


class RepresentationCollapseError(RuntimeError):
    """The collapse rule fired with `on_collapse: stop`."""


def _float64_matrix(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    # float64: the singular values of nearly collapsed features span many decades.
    return torch.as_tensor(np.asarray(features), dtype=torch.float64)


def rankme(features: torch.Tensor | np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): exp of the entropy of the singular values of the
    (n, d) feature matrix, normalized to sum to 1: 1 for rank-1 features, up to
    min(n, d) for features spread evenly over every direction.

    The features are centred over the batch first: pooled ViT features share a large
    common offset (uncentred, random weights and trained encoders alike score about 2 of
    128 on digits), which the probes' standardization removes anyway."""
    matrix = _float64_matrix(features)
    singular = torch.linalg.svdvals(matrix - matrix.mean(dim=0))
    p = singular / singular.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(features: torch.Tensor | np.ndarray) -> float:
    """SimSiam's collapse measure (Chen and He, 2021): mean over dimensions of the std
    over samples of the L2-normalized features. 0 when every image maps to one direction,
    about 1/sqrt(d) when the features spread evenly around the origin.

    Not centred, unlike `rankme`: features that collapse to one point plus a tiny
    image-dependent part keep a full centred rank, and only their spread relative to
    their norm shows it. Average-pooled ViT features share a large common direction, so
    sound encoders score well below 1/sqrt(d) (random weights: 0.08 to 0.17 / sqrt(d),
    BENCHMARKS.md, "Where the collapse floors sit"); the collapse rule's default floor
    is 0.01 / sqrt(d)."""
    matrix = _float64_matrix(features)
    return float(torch.nn.functional.normalize(matrix, dim=1).std(dim=0).mean())


@dataclass
class CollapseRule:
    """Collapse when RankMe < `rankme_fraction` x feature dimension or the normalized
    std < `std_fraction` / sqrt(dimension), for `patience` checks in a row."""

    rankme_fraction: float
    std_fraction: float
    patience: int
    in_a_row: int = 0

    def thresholds(self, dim: int) -> tuple[float, float]:
        return self.rankme_fraction * dim, self.std_fraction / math.sqrt(dim)

    def below_floor(self, metrics: dict[str, float], dim: int) -> list[str]:
        """What is below its floor at this check, one phrase per metric."""
        rank_floor, std_floor = self.thresholds(dim)
        low = []
        if metrics["rankme"] < rank_floor:
            low.append(
                f"RankMe {metrics['rankme']:.2f} < {rank_floor:.2f} "
                f"(monitors.collapse.rankme_fraction={self.rankme_fraction} x {dim} dims)"
            )
        if metrics["feature_std"] < std_floor:
            low.append(
                f"normalized feature std {metrics['feature_std']:.4f} < {std_floor:.4f} "
                f"(monitors.collapse.std_fraction={self.std_fraction} / sqrt({dim}))"
            )
        return low

    def replay(self, history: list[dict], dim: int) -> None:
        """Recounts the low checks in a row from a resumed run's history, so that the
        resumed run warns or stops at the same check as an uninterrupted one."""
        self.in_a_row = 0
        for row in history:
            if row.get("rankme") is not None and not math.isnan(row["rankme"]):
                self.in_a_row = self.in_a_row + 1 if self.below_floor(row, dim) else 0

    def check(self, metrics: dict[str, float], dim: int) -> str | None:
        """A message naming the metric when the rule fires at this check, else None."""
        low = self.below_floor(metrics, dim)
        self.in_a_row = self.in_a_row + 1 if low else 0
        if self.in_a_row < self.patience:
            return None
        return f"{' and '.join(low)} for {self.in_a_row} checks in a row"


@dataclass
class TrainingMonitor:
    """Computes the monitors for `train` (called on every process, so all agree on a
    stop). `held_out` is a fixed batch of normalized images never trained on; `knn_train`
    and `knn_val` are (images, labels) for the kNN monitor, or None without labels."""

    config: MonitorConfig
    held_out: torch.Tensor
    knn_train: tuple[NormalizedImages | torch.Tensor, np.ndarray] | None = None
    knn_val: tuple[NormalizedImages | torch.Tensor, np.ndarray] | None = None
    description: str = "pretrain"
    rule: CollapseRule = field(init=False)

    def __post_init__(self) -> None:
        collapse = self.config.collapse
        self.rule = CollapseRule(collapse.rankme_fraction, collapse.std_fraction, collapse.patience)

    def due_at_step(self, step: int) -> bool:
        return self.config.every_steps is not None and step % self.config.every_steps == 0

    def due_at_epoch_end(self, epoch: int) -> bool:
        every = self.config.knn_every_epochs
        return every is not None and self.knn_train is not None and (epoch + 1) % every == 0

    @torch.no_grad()
    def representation(self, method: PretrainingMethod, step: int) -> dict[str, float]:
        """RankMe, normalized std and the method's own metrics on the held-out batch;
        warns or stops per the collapse rule."""
        was_training = method.training
        method.eval()
        encoder = method.evaluation_encoder()
        # The features the probes will see (the features pipeline's `last` pooling).
        features = encoder_features(encoder, self.held_out)
        metrics = {"rankme": rankme(features), "feature_std": normalized_std(features)}
        device = next(encoder.parameters()).device
        # The method's own metrics are means over patches: 64 images are plenty, and
        # I-JEPA's predictor pass over all of them would cost a training step.
        metrics.update(method.monitor_metrics(self.held_out[:64].to(device)))
        method.train(was_training)
        message = self.rule.check(metrics, features.shape[1])
        if message is not None:
            text = f"{self.description}: representation collapse at step {step}: {message}"
            if self.config.collapse.on_collapse == "stop":
                raise RepresentationCollapseError(
                    f"{text}; stopped (monitors.collapse.on_collapse=stop; set it to warn "
                    "to train on)"
                )
            logger.warning(text)
        return metrics

    def resume(self, method: PretrainingMethod, history: list[dict]) -> None:
        """Restores the collapse rule's state from the history of a resumed run."""
        self.rule.replay(history, method.evaluation_encoder().embed_dim)

    def knn_accuracy(self, method: PretrainingMethod) -> dict[str, float]:
        """kNN accuracy (%) on the val split, the evaluation pipeline's protocol."""
        assert self.knn_train is not None and self.knn_val is not None
        was_training = method.training
        encoder = method.evaluation_encoder()
        train_features = encoder_features(encoder, self.knn_train[0])
        val_features = encoder_features(encoder, self.knn_val[0])
        method.train(was_training)
        accuracy = knn_protocol(
            (train_features, self.knn_train[1]), (val_features, self.knn_val[1]), self.config.knn_k
        )
        return {"knn_val_accuracy": 100.0 * accuracy}


def build_monitor(
    images: np.ndarray,
    samples: pd.DataFrame,
    normalization: dict,
    config: MonitorConfig,
    seed: int,
    description: str,
) -> TrainingMonitor | None:
    """The monitor of one run over the pipeline's images and samples table.

    The held-out batch is up to `held_out_images` val-split images, never trained on (a
    dataset without a val split falls back to training images, with a warning); the kNN
    monitor fits on up to `knn_max_train_images` labelled train-split images and scores
    the val split. Rows are chosen once, from `seed`. None when every monitor is off."""
    if config.every_steps is None and config.knn_every_epochs is None:
        return None
    rng = np.random.default_rng([seed, 0x6D6F6E])  # 0x6D6F6E: "mon"
    split = samples["split"].to_numpy()
    trained = pretraining_rows(samples)
    val = np.flatnonzero((split == "val") & ~trained)
    if len(val) == 0:
        logger.warning(
            "%s: no val-split images to hold out; the representation monitors use "
            "training images instead, and the kNN monitor is off",
            description,
        )
        pool = np.flatnonzero(trained)
    else:
        pool = val
    chosen = np.sort(rng.permutation(pool)[: config.held_out_images])
    held_out = NormalizedImages(images, normalization, _mask(len(samples), chosen))[:]
    labelled = evaluated_rows(samples)
    train = np.flatnonzero(labelled & (split == "train"))
    if len(val) == 0 or len(train) == 0 or config.knn_every_epochs is None:
        return TrainingMonitor(config, held_out, description=description)
    train = np.sort(rng.permutation(train)[: config.knn_max_train_images])
    labels = samples["label"].to_numpy()
    val_labelled = val[labelled[val]]
    return TrainingMonitor(
        config,
        held_out,
        (NormalizedImages(images, normalization, _mask(len(samples), train)), labels[train]),
        (
            NormalizedImages(images, normalization, _mask(len(samples), val_labelled)),
            labels[val_labelled],
        ),
        description,
    )


def _mask(length: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    mask[rows] = True
    return mask
