"""Probe every feature set with the same protocols."""

from __future__ import annotations

import numpy as np
import pandas as pd

from selfsup.config import EvaluationConfig
from selfsup.evaluation import evaluate_features


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
