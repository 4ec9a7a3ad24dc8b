"""Probe every feature set with the same protocols and write one report."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from selfsup.config import EvaluationConfig
from selfsup.evaluation import evaluate_features, metrics_table

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


def report_metrics(**metrics: dict) -> tuple[dict, str]:
    """All metrics in one JSON and one markdown table (percent accuracies)."""
    table = metrics_table(metrics)
    return metrics, "# Frozen-feature evaluation (test accuracy, %)\n\n" + table
