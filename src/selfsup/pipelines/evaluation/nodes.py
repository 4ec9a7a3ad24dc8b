"""Probe every feature set with the same protocols and write one report."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selfsup.comparison import comparison_frame, comparison_markdown
from selfsup.config import EvaluationConfig
from selfsup.evaluation import evaluate_features
from selfsup.plots import plot_comparison

logger = logging.getLogger(__name__)


def evaluate(
    features: np.ndarray, samples: pd.DataFrame, evaluation: EvaluationConfig, seed: int
) -> dict:
    return evaluate_features(
        np.asarray(features),
        samples["label"].to_numpy(),
        samples["split"].to_numpy(),
        evaluation,
        seed,
    )


def collect_metrics(**metrics: dict) -> dict:
    """Every feature set's metrics in one JSON, keyed by name."""
    return metrics


def compare_methods(
    metrics: dict, **training_histories: pd.DataFrame
) -> tuple[pd.DataFrame, str, Figure]:
    """The comparison table (CSV and markdown) and its bar chart."""
    frame = comparison_frame(metrics, training_histories)
    return frame, comparison_markdown(frame), plot_comparison(frame)
