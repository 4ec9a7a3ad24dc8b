"""Where the collapse rule's floors sit against real encoders and a real collapse.

The monitors' normalized std (SimSiam's: per-dimension std of the L2-normalized
features, not centred) and RankMe (centred) are computed on the monitors' held-out
batch of the last `kedro run` (the encoders in data/06_models and the pipeline's
random-init ViT), on a random-weight ViT-B/16 at 224 px (the `vit_b16` environment's
encoder) fed smooth and white-noise images, and on features collapsed to one point:
the I-JEPA features of the first held-out image plus an image-dependent part of a
given size relative to it. For comparison, the column "centred std" is the same std
after centring the batch, the measure the monitors used before: it cannot tell a
point collapse from spread features.

Usage (repository root, project environment, after `kedro run` or `dvc repro`):
    python benchmarks/collapse_floor.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from selfsup.config import EncoderConfig, MonitorConfig
from selfsup.evaluation import encoder_features
from selfsup.models.vit import VisionTransformerEncoder, build_encoder, encoder_from_checkpoint
from selfsup.monitors import CollapseRule, build_monitor, normalized_std, rankme

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ijepa", "mae", "simclr")


def conf(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "base" / name).read_text())


def centred_std(features: np.ndarray) -> float:
    centred = torch.as_tensor(features, dtype=torch.float64)
    centred = centred - centred.mean(dim=0)
    return float(torch.nn.functional.normalize(centred, dim=1).std(dim=0).mean())


def held_out_batch() -> tuple[torch.Tensor, MonitorConfig]:
    data = ROOT / "data"
    images = np.load(data / "05_model_input" / "images.npy")
    normalization = json.loads((data / "05_model_input" / "normalization.json").read_text())
    samples = pd.read_csv(data / "02_intermediate" / "samples.csv")
    config = MonitorConfig(**conf("parameters_pretraining.yml")["ijepa"]["monitors"])
    seed = conf("parameters.yml")["seed"]
    monitor = build_monitor(images, samples, normalization, config, seed, "collapse_floor")
    return monitor.held_out, config


def vit_b16_features(images: torch.Tensor) -> np.ndarray:
    torch.manual_seed(0)
    encoder = VisionTransformerEncoder(
        224, 16, 3, embed_dim=768, depth=12, num_heads=12, weight_init="trunc_normal"
    )
    return encoder_features(encoder, images, batch_size=16)


def main() -> None:
    torch.set_num_threads(2)
    held_out, config = held_out_batch()
    rows: list[tuple[str, np.ndarray]] = []
    for method in METHODS:
        checkpoint = torch.load(
            ROOT / "data" / "06_models" / method / "encoder.pt", weights_only=True
        )
        rows.append(
            (f"{method} (trained)", encoder_features(encoder_from_checkpoint(checkpoint), held_out))
        )
    encoder_config = checkpoint["config"]
    torch.manual_seed(conf("parameters.yml")["seed"])  # as the features pipeline's random_init
    random_init = build_encoder(
        EncoderConfig(**encoder_config["encoder"]),
        encoder_config["image_size"],
        encoder_config["patch_size"],
        encoder_config["in_chans"],
    )
    rows.append(("random_init", encoder_features(random_init, held_out)))

    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.randn(64, 3, 7, 7, generator=generator), size=224, mode="bilinear"
    )
    rows.append(("ViT-B/16 random weights, smooth noise", vit_b16_features(smooth)))
    white = torch.randn(64, 3, 224, 224, generator=generator)
    rows.append(("ViT-B/16 random weights, white noise", vit_b16_features(white)))

    point = rows[0][1][0].astype(np.float64)
    rng = np.random.default_rng(0)
    for size in (1e-1, 1e-2, 1e-3, 1e-4):
        noise = rng.standard_normal((len(held_out), point.size))
        noise *= size * np.linalg.norm(point) / np.linalg.norm(noise, axis=1, keepdims=True)
        rows.append((f"one point + {size:g} x its norm", point + noise))

    collapse = config.collapse
    print(
        f"Collapse floors: RankMe < {collapse.rankme_fraction} x dim, "
        f"std < {collapse.std_fraction} / sqrt(dim)\n"
    )
    print("| features | dim | RankMe | centred std (before) | std | std x sqrt(dim) | rule |")
    print("|---|---|---|---|---|---|---|")
    for name, features in rows:
        dim = features.shape[1]
        metrics = {"rankme": rankme(features), "feature_std": normalized_std(features)}
        rule = CollapseRule(collapse.rankme_fraction, collapse.std_fraction, patience=1)
        fired = rule.below_floor(metrics, dim)
        low = ["RankMe" if phrase.startswith("RankMe") else "std" for phrase in fired]
        verdict = f"below the {' and '.join(low)} floor" if low else "-"
        print(
            f"| {name} | {dim} | {metrics['rankme']:.2f} | {centred_std(features):.4f} "
            f"| {metrics['feature_std']:.5f} | {metrics['feature_std'] * math.sqrt(dim):.3f} "
            f"| {verdict} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
