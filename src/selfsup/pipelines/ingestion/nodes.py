"""Load a source by name, split it, and describe it."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from selfsup.config import IngestionConfig
from selfsup.data.sources import load_source
from selfsup.data.splits import SPLITS, stratified_split

logger = logging.getLogger(__name__)


def ingest_images(ingestion: IngestionConfig, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """uint8 images (N, H, W, C) and a table of label, class name and split per image."""
    image_set = load_source(ingestion.source, ingestion.options)
    split = stratified_split(image_set.labels, ingestion.split.val, ingestion.split.test, seed)
    samples = pd.DataFrame(
        {
            "index": np.arange(len(image_set.labels)),
            "label": image_set.labels,
            "class_name": [image_set.class_names[label] for label in image_set.labels],
            "split": split,
        }
    )
    logger.info(
        "ingested %d images of shape %s from %r",
        *image_set.images.shape[:1],
        image_set.images.shape[1:],
        ingestion.source,
    )
    return image_set.images, samples


def report_dataset(images: np.ndarray, samples: pd.DataFrame) -> dict:
    """Image shape and counts per class and split."""
    counts = pd.crosstab(samples["class_name"], samples["split"]).reindex(
        columns=list(SPLITS), fill_value=0
    )
    return {
        "num_images": int(images.shape[0]),
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "num_classes": int(samples["label"].nunique()),
        "split_counts": {split: int((samples["split"] == split).sum()) for split in SPLITS},
        "class_counts": {
            name: {s: int(v) for s, v in row.items()} for name, row in counts.iterrows()
        },
    }
