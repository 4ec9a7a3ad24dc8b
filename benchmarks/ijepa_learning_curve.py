"""Probe I-JEPA's target and context encoders every few epochs on the embedded digits.

This is how the small-data defaults in conf/base were chosen (BENCHMARKS.md). Each
checkpoint reports linear probe / 5-shot / kNN test accuracy (%) and RankMe of the
average-pooled features, with a quick protocol (C in {0.1, 1}, 3 draws of 5 shots)
so a curve costs seconds per point.

Usage (repository root, project environment):
    python benchmarks/ijepa_learning_curve.py NAME '{"training": {...}, "method": {...}}' [EVERY]
Keys: "encoder", "masking", "training" (TrainingConfig) and "method" (IJEPAConfig)
override the small defaults below; one thread per run, so two runs can share 2 cores.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import numpy as np
import torch

from selfsup.config import (
    EncoderConfig,
    EvaluationConfig,
    LowShotConfig,
    MaskingConfig,
    TrainingConfig,
)
from selfsup.data.preprocessing import channel_statistics, resize_images, to_model_input
from selfsup.data.sources import load_source
from selfsup.data.splits import stratified_split
from selfsup.evaluation import encoder_features, evaluate_features
from selfsup.methods import build_method
from selfsup.training import train

SEED = 42
QUICK = EvaluationConfig(
    c_grid=[0.1, 1.0], max_iter=300, low_shot=LowShotConfig(shots=[5], draws=3)
)


def rankme(features: np.ndarray) -> float:
    """exp(entropy) of the normalized singular values of the centred features."""
    singular = torch.linalg.svdvals(torch.from_numpy(features - features.mean(0)))
    p = singular / singular.sum() + 1e-12
    return float(torch.exp(-(p * p.log()).sum()))


def main() -> None:
    name, overrides = sys.argv[1], json.loads(sys.argv[2])
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    digits = load_source("digits", {})
    split = stratified_split(digits.labels, 0.2, 0.2, SEED)
    masking = MaskingConfig(**overrides.get("masking", {}))
    encoder = EncoderConfig(
        **{"embed_dim": 128, "depth": 4, "num_heads": 4, **overrides.get("encoder", {})}
    )
    training = TrainingConfig(**{"num_threads": 1, **overrides.get("training", {})})
    images = resize_images(digits.images, masking.image_size)
    x = to_model_input(images, channel_statistics(images[split == "train"]))

    def score(module: torch.nn.Module) -> str:
        features = encoder_features(module, x)
        r = evaluate_features(features, digits.labels, split, QUICK, SEED)
        return (
            f"{100 * r['linear_probe']['test_accuracy']:.1f}/"
            f"{100 * r['low_shot']['5']['mean']:.1f}/{100 * r['knn']['test_accuracy']:.1f}"
            f"/rank {rankme(features):.0f}"
        )

    torch.manual_seed(SEED)
    method = build_method("ijepa", overrides.get("method", {}), encoder, masking, 1)
    print(f"{name}: init target {score(method.evaluation_encoder())}", flush=True)

    def on_epoch_end(epoch: int, m: torch.nn.Module) -> None:
        if (epoch + 1) % every == 0:
            print(
                f"{name}: epoch {epoch + 1} target {score(m.target_encoder)} "
                f"context {score(m.context_encoder)}",
                flush=True,
            )

    start = time.perf_counter()
    history = train(
        method,
        x[torch.from_numpy(split == "train")],
        training,
        SEED,
        description=name,
        on_epoch_end=on_epoch_end,
    )
    print(
        f"{name}: {time.perf_counter() - start:.0f} s, final loss "
        f"{history['loss'].iloc[-10:].mean():.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
