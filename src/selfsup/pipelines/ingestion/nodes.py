"""Load the source (and the evaluation source), split, and account for every file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from selfsup import lineage
from selfsup.config import IngestionConfig, MaskingConfig
from selfsup.data.chunked import ChunkedImages, ConcatenatedImages
from selfsup.data.image_folder import UnusableSourceError, summarize_rejections
from selfsup.data.image_set import ImageSet
from selfsup.data.samples import (
    labelled_rows,
    labelled_samples,
    pretraining_only_rows,
    samples_table,
)
from selfsup.data.sources import load_source
from selfsup.data.splits import PRETRAIN, SPLITS

logger = logging.getLogger(__name__)

REJECTED_FILES = "data/08_reporting/rejected_files.json"


def _accounting(key: str, name: str, image_set: ImageSet) -> dict:
    return {
        "key": key,
        "source": name,
        "accepted": int(image_set.images.shape[0]),
        "rejected": len(image_set.rejected),
        "ignored": len(image_set.ignored),
        "rejected_fraction": image_set.rejected_fraction,
    }


def _load_or_report(
    ingestion: IngestionConfig, key: str, name: str, options: dict, masking: MaskingConfig
) -> ImageSet:
    """`load_source`; when the source is unusable, its rejected files are still written
    to REJECTED_FILES (the error points there) before the error goes on."""
    config_key = "source" if key == "source" else "eval_source.source"
    try:
        return load_source(name, options, masking.image_size, config_key)
    except UnusableSourceError as error:
        report = {
            "max_rejected_fraction": ingestion.max_rejected_fraction,
            "sources": [
                {
                    "key": key,
                    "source": name,
                    "accepted": 0,
                    "rejected": len(error.rejected),
                    "ignored": 0,
                    "rejected_fraction": 1.0,
                }
            ],
            "rejected": [{**entry, "source": key} for entry in error.rejected],
            "ignored": [],
        }
        path = Path(REJECTED_FILES)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        lineage.remove_record(path)  # this report is no longer the one a run recorded
        raise


def _check_eval_source(name: str, source: ImageSet, evaluated: ImageSet) -> None:
    if not evaluated.labelled:
        raise ValueError(
            f"ingestion.eval_source ({name}) has no labels; the probes need a labelled "
            "evaluation source (e.g. an image_folder with class folders)"
        )
    if source.images.shape[1:] != evaluated.images.shape[1:]:
        raise ValueError(
            f"ingestion.source gives images of shape {source.images.shape[1:]} but "
            f"ingestion.eval_source gives {evaluated.images.shape[1:]}; both must match "
            "(an image_folder source resizes to masking.image_size: set its channels "
            "option to the other source's channel count)"
        )


def _rejection_report(ingestion: IngestionConfig, sources: list[tuple]) -> dict:
    """Every source's counts, rejected and ignored files, logged when there are any."""
    rejected = {
        "max_rejected_fraction": ingestion.max_rejected_fraction,
        "sources": [_accounting(key, name, s) for key, name, s in sources],
        "rejected": [{**entry, "source": key} for key, _, s in sources for entry in s.rejected],
        "ignored": [{**entry, "source": key} for key, _, s in sources for entry in s.ignored],
    }
    for entry in rejected["sources"]:
        if entry["rejected"] or entry["ignored"]:
            logger.warning(
                "ingestion.%s: %d files rejected, %d hidden files ignored; the list with "
                "reasons is in %s",
                entry["key"],
                entry["rejected"],
                entry["ignored"],
                REJECTED_FILES,
            )
    return rejected


def ingest_images(
    ingestion: IngestionConfig, masking: MaskingConfig, seed: int
) -> tuple[np.ndarray | ChunkedImages, pd.DataFrame, dict, dict]:
    """Images (N, H, W, C) uint8, one row per image (label, class, split, whether it is
    pretrained on, where it came from), the class index map and every rejected file.

    Sources that decode files resize to `masking.image_size` as they go."""
    source = _load_or_report(ingestion, "source", ingestion.source, ingestion.options, masking)
    eval_config = ingestion.eval_source
    sources = [("source", ingestion.source, source)]
    if eval_config is None:
        if source.labelled:
            samples = labelled_samples(source, ingestion, seed)
        else:
            samples = samples_table(pretraining_only_rows(len(source.labels)), source, True)
        images, class_names = source.images, source.class_names
    else:
        evaluated = _load_or_report(
            ingestion, "eval_source", eval_config.source, eval_config.options, masking
        )
        _check_eval_source(eval_config.source, source, evaluated)
        samples = pd.concat(
            [
                samples_table(pretraining_only_rows(len(source.labels)), source, True),
                samples_table(labelled_rows(evaluated, ingestion, seed), evaluated, False),
            ],
            ignore_index=True,
        )
        images = ConcatenatedImages([source.images, evaluated.images])
        class_names = evaluated.class_names
        sources.append(("eval_source", eval_config.source, evaluated))
    samples.insert(0, "index", np.arange(len(samples)))
    logger.info(
        "ingested %d images of shape %s (%d pretrained on, %d labelled for the probes)",
        len(samples),
        tuple(images.shape[1:]),
        int(samples["pretrain"].sum()),
        int(samples["split"].isin(SPLITS).sum()),
    )
    rejected = _rejection_report(ingestion, sources)
    return images, samples, {name: i for i, name in enumerate(class_names)}, rejected


def accept_ingestion(
    ingested_images: np.ndarray | ChunkedImages,
    ingested_samples: pd.DataFrame,
    ingested_class_index: dict,
    rejected_files: dict,
    ingestion: IngestionConfig,
) -> tuple[np.ndarray | ChunkedImages, pd.DataFrame, dict]:
    """Pass the images, samples and class index on to be saved, unless a source
    rejected too many files.

    A separate node so that rejected_files.json is on disk when this fails, and the
    previous images, samples and class index are still whole beside it."""
    for entry in rejected_files["sources"]:
        if entry["rejected_fraction"] > ingestion.max_rejected_fraction:
            mine = [e for e in rejected_files["rejected"] if e["source"] == entry["key"]]
            raise ValueError(
                f"ingestion.{entry['key']} rejected {entry['rejected']} of "
                f"{entry['accepted'] + entry['rejected']} files "
                f"({entry['rejected_fraction']:.1%}), more than "
                f"ingestion.max_rejected_fraction={ingestion.max_rejected_fraction:.1%}. "
                f"Every file and its reason is in {REJECTED_FILES}: {summarize_rejections(mine)}. "
                "Fix or remove those files, or raise ingestion.max_rejected_fraction"
            )
    return ingested_images, ingested_samples, ingested_class_index


def report_dataset(images: np.ndarray, samples: pd.DataFrame, rejected_files: dict) -> dict:
    """Image shape, counts per class and split, and how many files were rejected."""
    labelled = samples[samples["split"].isin(SPLITS)]
    counts = pd.crosstab(labelled["class_name"], labelled["split"]).reindex(
        columns=list(SPLITS), fill_value=0
    )
    return {
        "num_images": int(images.shape[0]),
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "num_classes": int(labelled["label"].nunique()),
        "num_pretraining_images": int(samples["pretrain"].sum()),
        "split_counts": {
            split: int((samples["split"] == split).sum()) for split in (*SPLITS, PRETRAIN)
        },
        "class_counts": {
            name: {s: int(v) for s, v in row.items()} for name, row in counts.iterrows()
        },
        "files": [
            {key: entry[key] for key in ("key", "source", "accepted", "rejected", "ignored")}
            for entry in rejected_files["sources"]
        ],
    }
