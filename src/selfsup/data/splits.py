"""Deterministic stratified train/val/test splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, val: float, test: float, seed: int) -> np.ndarray:
    """Split name per sample; class proportions are kept in every split."""
    indices = np.arange(len(labels))
    rest, test_idx = train_test_split(indices, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest,
        test_size=val / (1.0 - test),
        stratify=labels[rest],
        random_state=seed,
    )
    split = np.empty(len(labels), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    return split
