"""Frozen-feature evaluation: linear probe, low-shot probe and kNN (scikit-learn)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from selfsup.data.preprocessing import NormalizedImages
from selfsup.models import VisionTransformerEncoder
from selfsup.params import StrictModel


class FeatureConfig(StrictModel):
    """How frozen features are read from an encoder."""

    pooling: Literal["last", "last4", "grid"] = "last"
    grid_cells: int = Field(4, ge=1)  # cells per side of `grid`'s token-mean grid
    batch_size: int = Field(256, ge=1)


class LowShotConfig(StrictModel):
    shots: list[int] = Field(default_factory=lambda: [1, 5, 10])
    draws: int = Field(5, ge=1)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if not shots or min(shots) < 1:
            raise ValueError(f"evaluation.low_shot.shots={shots} must be positive")
        return shots


class WeightedKnnConfig(StrictModel):
    """The kNN that DINO and solo-learn report: cosine similarity on L2-normalized
    features, the k most similar train images voting with weight exp(similarity / T)."""

    k: int = Field(20, ge=1)
    temperature: float = Field(0.07, gt=0)


class EvaluationConfig(StrictModel):
    """Linear probe, low-shot probe and kNN protocols."""

    c_grid: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    max_iter: int = Field(2000, ge=10)
    # The solver stops once the gradient is this small. At scikit-learn's 1e-4 the fits
    # stop where the BLAS kernel leaves them, and low-shot means moved by up to 0.3 points
    # between OpenBLAS's kernels for two processors; at 1e-8 they agree exactly.
    tol: float = Field(1e-8, gt=0, le=1e-2)
    low_shot: LowShotConfig = LowShotConfig()
    knn_k: int = Field(20, ge=1)
    knn_weighted: WeightedKnnConfig = WeightedKnnConfig()

    @field_validator("c_grid")
    @classmethod
    def _positive_grid(cls, grid: list[float]) -> list[float]:
        if not grid or min(grid) <= 0:
            raise ValueError(f"evaluation.c_grid={grid} must hold positive values")
        return grid


logger = logging.getLogger(__name__)


def check_pooling(
    pooling: str,
    grid_cells: int,
    depth: int,
    grid: int,
    names: tuple[str, str] = ("features.pooling", "features.grid_cells"),
) -> None:
    """Refuses a read-out the encoder cannot give: `last4` needs 4 blocks, `grid` at
    most one cell per patch. Called before any training (the project hooks) and again
    when the features are read, where the encoder may come from a checkpoint. `names`
    are the two settings as the user wrote them."""
    if pooling == "last4" and depth < 4:
        raise ValueError(
            f"{names[0]}='last4' needs 4 blocks but the encoder has {depth}; use "
            "pooling 'last' or 'grid', or a deeper encoder (encoder.depth)"
        )
    if pooling == "grid" and grid_cells > grid:
        raise ValueError(
            f"{names[1]}={grid_cells} asks for more cells per side than the "
            f"encoder's {grid}x{grid} patch grid has patches; use {names[1]} <= {grid}"
        )


def pooled_tokens(tokens: torch.Tensor, pooling: str, grid_cells: int) -> torch.Tensor:
    """(B, L, D) tokens of one block in raster order -> (B, D), or for `grid` the mean
    next to a grid_cells x grid_cells grid of token means, (B, D * (1 + grid_cells**2)),
    cell by cell. adaptive_avg_pool2d cuts a grid that grid_cells does not divide into
    near-equal cells."""
    mean = tokens.mean(dim=1)
    if pooling != "grid":
        return mean
    side = math.isqrt(tokens.shape[1])
    token_map = tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)
    cells = F.adaptive_avg_pool2d(token_map, grid_cells).flatten(2).transpose(1, 2)
    return torch.cat([mean, cells.flatten(1)], dim=1)


@torch.no_grad()
def encoder_features(
    encoder: VisionTransformerEncoder,
    images: torch.Tensor | NormalizedImages,
    pooling: str = "last",
    batch_size: int = 256,
    grid_cells: int = 4,
) -> np.ndarray:
    """Average-pooled tokens of the last block (`last`), the concatenation of the
    average-pooled last four blocks (`last4`), or the last block's average next to a
    grid_cells x grid_cells grid of token averages, which keeps where things are in
    the image (`grid`); float32 (N, D x outputs)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    layers = {"last": 1, "last4": 4, "grid": 1}[pooling]
    check_pooling(pooling, grid_cells, len(encoder.blocks), encoder.grid)
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        outputs = encoder.forward_layers(batch, last=layers)
        pooled = [pooled_tokens(out, pooling, grid_cells) for out in outputs]
        chunks.append(torch.cat(pooled, dim=-1).float().cpu())
    return torch.cat(chunks).numpy()


# The probes run on one BLAS thread: a fit stopped early lands elsewhere when float sums
# are split over another number of threads (measured: the same I-JEPA features gave
# 94.7 % on one thread and 94.2 % on two), and a probe must give the same number on any
# machine. The fits are small; one thread costs seconds. For the same reason they run to
# a tight tolerance (evaluation.tol): the BLAS kernel differs from processor to processor.
_PROBE_THREADS = 1


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    c: float,
    max_iter: int,
    tol: float,
    start: LogisticRegression | None = None,
) -> LogisticRegression:
    """Multinomial logistic regression, from the weights of `start` when given (a fit
    of the same data at another C); warns, naming the setting to raise, when it stops
    at max_iter, where its accuracy may depend on the processor.

    Newton-CG: to the probes' tight `tol` it needs at most 17 iterations on the default
    run's features where lbfgs needed up to 888, and it ends at the same optimum (the
    loss is strictly convex): the same metrics in 0.38 to 0.51 of the time
    (`benchmarks/probes.py`; docs/defaults.md, "The same numbers on another processor")."""
    model = LogisticRegression(
        C=c, max_iter=max_iter, tol=tol, solver="newton-cg", warm_start=start is not None
    )
    if start is not None:
        model.coef_, model.intercept_ = start.coef_.copy(), start.intercept_.copy()
    with threadpool_limits(limits=_PROBE_THREADS), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x.astype(np.float64), y)
    stopped_early = False
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            stopped_early = True
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if stopped_early:
        logger.warning(
            "a probe (C=%g, %d train images) stopped at evaluation.max_iter=%d before "
            "reaching evaluation.tol=%g; its accuracy may differ on another processor: "
            "raise evaluation.max_iter",
            c,
            len(y),
            max_iter,
            tol,
        )
    return model


def select_c_and_score(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    config: EvaluationConfig,
) -> dict:
    """Fit one probe per C in the grid, keep the best on val (the first in grid order
    on a tie), score it on test. The fits run from the smallest C up, each starting
    from the previous C's weights: every fit still runs to `config.tol`, so it ends
    where a fit from zero ends, in fewer iterations."""
    scores = {}
    model = None
    for c in sorted(set(config.c_grid)):
        model = fit_logistic(*train, c, config.max_iter, config.tol, start=model)
        scores[c] = (model.score(*val), model.score(*test))
    best_c = max(config.c_grid, key=lambda c: (scores[c][0], -config.c_grid.index(c)))
    return {
        "test_accuracy": float(scores[best_c][1]),
        "val_accuracy": float(scores[best_c][0]),
        "C": float(best_c),
    }


def few_shot_indices(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """`shots` indices per class drawn without replacement."""
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise ValueError(
                f"class {label} has {len(members)} train images, fewer than "
                f"evaluation.low_shot.shots={shots}"
            )
        picked.append(rng.choice(members, size=shots, replace=False))
    return np.concatenate(picked)


class NoLabelledImagesError(ValueError):
    """Features and probes need labelled images and the ingested set has none."""


def no_labels_message() -> str:
    return (
        "the ingested images are unlabelled, so there is nothing to probe: set "
        "ingestion.eval_source to a labelled source, or pretrain only with "
        "`kedro run --pipelines ingestion,masking,pretraining`"
    )


def check_enough_labels(labels: np.ndarray, splits: np.ndarray, config: EvaluationConfig) -> None:
    """Every class needs as many train images as the largest low-shot draw; said up
    front (the hooks call this right after ingestion) rather than after pretraining."""
    train = labels[splits == "train"]
    counts = {int(label): int((train == label).sum()) for label in np.unique(labels)}
    fewest_label = min(counts, key=counts.get)
    most_shots = max(config.low_shot.shots)
    if counts[fewest_label] < most_shots:
        raise ValueError(
            f"class {fewest_label} has {counts[fewest_label]} train images, fewer than "
            f"evaluation.low_shot.shots={most_shots}; remove that value from "
            "evaluation.low_shot.shots or add labelled images"
        )


def knn_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int
) -> float:
    """Majority vote of the k nearest train features by cosine similarity."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train[1])), metric="cosine")
    with threadpool_limits(limits=_PROBE_THREADS):
        return float(knn.fit(*train).score(*test))


def weighted_knn_accuracy(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    config: WeightedKnnConfig,
) -> float:
    """DINO's and solo-learn's weighted kNN on the raw features (no standardization):
    each of the k train features most similar by cosine votes for its class with
    weight exp(similarity / temperature); scikit-learn's cosine distance is
    1 - similarity. In float64, so the vote does not depend on the processor."""

    def weights(distances: np.ndarray) -> np.ndarray:
        return np.exp((1.0 - distances) / config.temperature)

    knn = KNeighborsClassifier(
        n_neighbors=min(config.k, len(train[1])), metric="cosine", weights=weights
    )
    with threadpool_limits(limits=_PROBE_THREADS):
        knn.fit(train[0].astype(np.float64), train[1])
        return float(knn.score(test[0].astype(np.float64), test[1]))


def knn_protocol(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int
) -> float:
    """The evaluation's kNN: features standardized with the train features' statistics,
    then `knn_accuracy`. The training monitors call it too, so their kNN is this one."""
    scaler = StandardScaler().fit(train[0])
    train_x = scaler.transform(train[0]).astype(np.float32)
    test_x = scaler.transform(test[0]).astype(np.float32)
    return knn_accuracy((train_x, train[1]), (test_x, test[1]), k)


def probe_workers() -> int:
    """Threads that fit probes side by side: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fit_probes(
    subsets: list[tuple[np.ndarray, np.ndarray]],
    part: dict[str, tuple[np.ndarray, np.ndarray]],
    config: EvaluationConfig,
) -> list[dict]:
    """`select_c_and_score` of each train subset, in order, fitted by `probe_workers`
    threads at once (the solver spends its time in BLAS and numpy, which release the GIL).
    Each fit still runs on one BLAS thread, so every number is what a serial run gives:
    the limit is set once around the pool, because threads entering and leaving their
    own limits would restore each other's thread counts mid-fit."""
    with threadpool_limits(limits=_PROBE_THREADS), ThreadPoolExecutor(probe_workers()) as pool:
        return list(
            pool.map(
                lambda train: select_c_and_score(train, part["val"], part["test"], config), subsets
            )
        )


def evaluate_features(
    features: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    config: EvaluationConfig,
    seed: int,
) -> dict:
    """All protocols on one feature matrix aligned with `labels` and `splits`.

    Features are standardized with statistics of the whole train split (its images
    are available without labels in every protocol). C is chosen on the val split
    from `config.c_grid`, for the full probe and for each low-shot draw.
    """
    check_enough_labels(labels, splits, config)
    scaler = StandardScaler().fit(features[splits == "train"])
    x = scaler.transform(features).astype(np.float32)
    part = {name: (x[splits == name], labels[splits == name]) for name in ("train", "val", "test")}

    rng = np.random.default_rng(seed)
    subsets = {"linear": part["train"]}
    for shots in config.low_shot.shots:
        for draw in range(config.low_shot.draws):
            chosen = few_shot_indices(part["train"][1], shots, rng)
            subsets[shots, draw] = (part["train"][0][chosen], part["train"][1][chosen])
    probes = dict(zip(subsets, fit_probes(list(subsets.values()), part, config), strict=True))
    low_shot = {}
    for shots in config.low_shot.shots:
        scores = [probes[shots, draw]["test_accuracy"] for draw in range(config.low_shot.draws)]
        low_shot[str(shots)] = {"mean": float(np.mean(scores)), "std": float(np.std(scores))}

    return {
        "linear_probe": probes["linear"],
        "low_shot": low_shot,
        "knn": {
            "test_accuracy": knn_protocol(
                (features[splits == "train"], labels[splits == "train"]),
                (features[splits == "test"], labels[splits == "test"]),
                config.knn_k,
            )
        },
        "knn_weighted": {
            "test_accuracy": weighted_knn_accuracy(
                (features[splits == "train"], labels[splits == "train"]),
                (features[splits == "test"], labels[splits == "test"]),
                config.knn_weighted,
            )
        },
        "feature_dim": int(features.shape[1]),
    }


def tsne_2d(features: np.ndarray, seed: int) -> np.ndarray:
    """A 2-D t-SNE map of standardized features (scikit-learn, PCA initialization,
    perplexity 30 or less when there are few points), float64 (N, 2); on one BLAS
    thread with a fixed seed, so the same features give the same map."""
    count = len(features)
    if count < 3:
        raise ValueError(f"a t-SNE map needs at least 3 images, got {count}")
    scaled = StandardScaler().fit_transform(features.astype(np.float64))
    perplexity = min(30.0, (count - 1) / 3)
    with threadpool_limits(limits=_PROBE_THREADS):
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1)
        return tsne.fit_transform(scaled)
