"""How much the probe's pooling, not the encoder, costs on small images.

The features pipeline averages the last block's tokens (the papers' protocol). On 8x8
digits that average discards where the strokes are, which the raw-pixel baseline keeps.
This script probes the encoders of the last `kedro run` (data/06_models/*/encoder.pt)
and the same ViT with random weights (the pipeline's random_init: conf/base seed) with
the pipeline's average, with the pipeline's other option (`features.pooling: last4`, the
paper's concatenated averages of the last 4 blocks), and with the average next to a 2x2
grid (5 x 128 dims) or a 4x4 grid (17 x 128 dims) of token averages (`features.pooling:
grid` with `grid_cells` 2 or 4), through the evaluation pipeline's own protocols
(`evaluate_features`).

Usage (repository root, project environment, after `kedro run` or `dvc repro`):
    python benchmarks/pooling_probe.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from selfsup.config import EncoderConfig, EvaluationConfig
from selfsup.data.preprocessing import NormalizedImages
from selfsup.evaluation import encoder_features, evaluate_features
from selfsup.models.vit import (
    build_encoder,
    encoder_from_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ijepa", "mae", "simclr")


def conf(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / name).read_text())


def main() -> None:
    torch.set_num_threads(2)
    data = ROOT / "data"
    images = np.load(data / "05_model_input" / "images.npy")
    normalization = json.loads((data / "05_model_input" / "normalization.json").read_text())
    samples = pd.read_csv(data / "02_intermediate" / "samples.csv")
    labels, splits = samples["label"].to_numpy(), samples["split"].to_numpy()
    evaluation = EvaluationConfig(**conf("parameters_evaluation.yml")["evaluation"])
    seed = conf("parameters.yml")["seed"]
    inputs = NormalizedImages(images, normalization)[np.arange(len(images))]

    encoders = {}
    for method in METHODS:
        checkpoint = torch.load(data / "06_models" / method / "encoder.pt", weights_only=True)
        encoders[method] = encoder_from_checkpoint(checkpoint)
    config = checkpoint["config"]
    torch.manual_seed(seed)  # as the features pipeline's random_init
    encoders["random_init"] = build_encoder(
        EncoderConfig(**config["encoder"]),
        config["image_size"],
        config["patch_size"],
        config["in_chans"],
    )

    print("| features | pooling | dims | linear | 1-shot | 5-shot | kNN |")
    print("|---|---|---|---|---|---|---|")
    raw = inputs.flatten(1).numpy()
    rows = [("raw_pixels", "pixels", raw)]
    for name, encoder in encoders.items():
        # The first two rows are the features pipeline's own read-outs.
        for pooling, label in (("last", "mean (pipeline)"), ("last4", "last4 (pipeline option)")):
            rows.append((name, label, encoder_features(encoder, inputs, pooling)))
        for cells in (2, 4):
            features = encoder_features(encoder, inputs, "grid", grid_cells=cells)
            rows.append((name, f"mean + {cells}x{cells} grid (pipeline option)", features))
    for name, pooling, features in rows:
        result = evaluate_features(features, labels, splits, evaluation, seed)
        print(
            f"| {name} | {pooling} | {features.shape[1]} "
            f"| {100 * result['linear_probe']['test_accuracy']:.1f} "
            f"| {100 * result['low_shot']['1']['mean']:.1f} "
            f"| {100 * result['low_shot']['5']['mean']:.1f} "
            f"| {100 * result['knn']['test_accuracy']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
