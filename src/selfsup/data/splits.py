"""Deterministic stratified train/val/test splits, and which rows each stage uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")
# Rows of a pretraining-only source (unlabelled, or beside an eval_source): no probe sees them.
PRETRAIN = "pretrain"


def stratified_split(
    labels: np.ndarray,
    val: float,
    test: float,
    seed: int,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Split name per sample; class proportions are kept in every split."""
    counts = np.bincount(labels)
    smallest = int(np.argmin(counts))
    if counts[smallest] < 3:
        name = class_names[smallest] if class_names else smallest
        raise ValueError(
            f"class {name!r} has {counts[smallest]} image(s); a stratified train/val/test "
            "split needs at least 3 per class. Add images to it or remove the class"
        )
    indices = np.arange(len(labels))
    try:
        rest, test_idx = train_test_split(
            indices, test_size=test, stratify=labels, random_state=seed
        )
        train_idx, val_idx = train_test_split(
            rest,
            test_size=val / (1.0 - test),
            stratify=labels[rest],
            random_state=seed,
        )
    except ValueError as error:
        raise ValueError(
            f"cannot split {len(labels)} images of {len(counts)} classes into "
            f"ingestion.split val={val}, test={test} with every class in every split "
            f"({error}); use more images per class or larger split fractions"
        ) from None
    split = np.empty(len(labels), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return split


def pretraining_rows(samples: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the images the methods pretrain on."""
    return samples["pretrain"].to_numpy(dtype=bool)


def evaluated_rows(samples: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the labelled train/val/test images the probes use; features are
    extracted for these rows only, in this order."""
    return samples["split"].isin(SPLITS).to_numpy()
