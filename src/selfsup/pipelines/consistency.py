"""Checks that a node's inputs come from one run of the pipelines before it works on them."""

from __future__ import annotations

import numpy as np
import pandas as pd

SAMPLES_FILE = "data/02_intermediate/samples.csv"
MODEL_INPUT_FILE = "data/05_model_input/images.npy"


class MixedRunsError(ValueError):
    """Inputs written by different runs (one stopped between its saves)."""


def check_rows_match(model_input_images: np.ndarray, samples: pd.DataFrame) -> None:
    """The model input has one row per sample; otherwise the files are from two runs."""
    if len(model_input_images) != len(samples):
        raise MixedRunsError(
            f"{MODEL_INPUT_FILE} holds {len(model_input_images)} images but {SAMPLES_FILE} "
            f"describes {len(samples)}: they were written by different runs (one stopped "
            "between its saves). Rerun `kedro run --pipelines ingestion,masking`, then "
            "the rest"
        )
