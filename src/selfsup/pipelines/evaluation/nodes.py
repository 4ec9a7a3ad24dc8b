"""Probe every feature set with the same protocols."""

from __future__ import annotations

import numpy as np
import pandas as pd

from selfsup.config import EvaluationConfig
from selfsup.data.splits import evaluated_rows
from selfsup.evaluation import evaluate_features


def evaluate(
    features: np.ndarray, samples: pd.DataFrame, evaluation: EvaluationConfig, seed: int
) -> dict:
    """`features` has one row per labelled image (`evaluated_rows`), in sample order."""
    labelled = samples[evaluated_rows(samples)]
    if len(labelled) != len(features):
        raise ValueError(
            f"{len(features)} feature rows for {len(labelled)} labelled images; the "
            "features are stale: rerun the features pipeline (or `kedro run`)"
        )
    return evaluate_features(
        np.asarray(features),
        labelled["label"].to_numpy(),
        labelled["split"].to_numpy(),
        evaluation,
        seed,
    )
