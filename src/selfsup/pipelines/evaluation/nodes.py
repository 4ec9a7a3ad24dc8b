"""Probe every feature set with the same protocols."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selfsup.config import EvaluationConfig
from selfsup.data.splits import evaluated_rows
from selfsup.evaluation import evaluate_features, tsne_2d
from selfsup.plots import plot_feature_map


def _labelled(features: np.ndarray, samples: pd.DataFrame) -> pd.DataFrame:
    """The samples of the feature rows: one row per labelled image (`evaluated_rows`),
    in sample order."""
    labelled = samples[evaluated_rows(samples)]
    if len(labelled) != len(features):
        raise ValueError(
            f"{len(features)} feature rows for {len(labelled)} labelled images; the "
            "features are stale: rerun the features pipeline (or `kedro run`)"
        )
    return labelled


def evaluate(
    features: np.ndarray, samples: pd.DataFrame, evaluation: EvaluationConfig, seed: int
) -> dict:
    labelled = _labelled(features, samples)
    return evaluate_features(
        np.asarray(features),
        labelled["label"].to_numpy(),
        labelled["split"].to_numpy(),
        evaluation,
        seed,
    )


def plot_test_map(features: np.ndarray, samples: pd.DataFrame, seed: int, name: str) -> Figure:
    """t-SNE of the test images' features, coloured by class."""
    labelled = _labelled(features, samples)
    test = (labelled["split"] == "test").to_numpy()
    points = tsne_2d(np.asarray(features)[test], seed)
    classes = labelled["class_name"].to_numpy()[test]
    title = f"{name}: t-SNE of the test features ({int(test.sum())} images)"
    return plot_feature_map(points, classes, title)


def plot_test_map_of(name: str) -> Callable[..., Figure]:
    """`plot_test_map` with the feature set's name bound (for the title). Unlike
    functools.partial, the result keeps the function's name and type hints."""

    @wraps(plot_test_map)
    def plot_named(features: np.ndarray, samples: pd.DataFrame, seed: int) -> Figure:
        return plot_test_map(features, samples, seed, name)

    return plot_named
