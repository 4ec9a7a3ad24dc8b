"""The samples table: one row per ingested image with its label, split, whether it is
pretrained on, and where it came from."""

from __future__ import annotations

import numpy as np
import pandas as pd

from selfsup.data.image_set import UNLABELLED, ImageSet
from selfsup.data.sources import IngestionConfig
from selfsup.data.splits import PRETRAIN, stratified_split


def labelled_rows(image_set: ImageSet, ingestion: IngestionConfig, seed: int) -> dict:
    """Labels, class names and the stratified train/val/test split of a labelled set."""
    split = stratified_split(
        image_set.labels, ingestion.split.val, ingestion.split.test, seed, image_set.class_names
    )
    return {
        "label": image_set.labels,
        "class_name": [image_set.class_names[label] for label in image_set.labels],
        "split": split,
    }


def pretraining_only_rows(count: int) -> dict:
    """Rows of images that are only pretrained on (no label, no probe split)."""
    return {
        "label": np.full(count, UNLABELLED, dtype=np.int64),
        "class_name": [""] * count,
        "split": np.full(count, PRETRAIN, dtype=object),
    }


def samples_table(rows: dict, image_set: ImageSet, pretrain: np.ndarray | bool) -> pd.DataFrame:
    count = image_set.images.shape[0]
    return pd.DataFrame(
        {
            **rows,
            "pretrain": pretrain,
            "path": image_set.paths or [f"image[{i}]" for i in range(count)],
        }
    )


def labelled_samples(image_set: ImageSet, ingestion: IngestionConfig, seed: int) -> pd.DataFrame:
    """A labelled source on its own: split for the probes, its train split pretrained on."""
    rows = labelled_rows(image_set, ingestion, seed)
    return samples_table(rows, image_set, rows["split"] == "train")
