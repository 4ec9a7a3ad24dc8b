"""Probe one method's evaluation encoder every few epochs on the embedded digits.

This is how the small-data defaults in conf/base were chosen (BENCHMARKS.md). Each
checkpoint reports linear probe / 5-shot / kNN test accuracy (%) and RankMe of the
average-pooled features, with a quick protocol (C in {0.1, 1}, 3 draws of 5 shots)
so a curve costs seconds per point. For I-JEPA the context encoder is probed too.

Usage (repository root, project environment):
    python benchmarks/learning_curve.py METHOD NAME '{"training": {...}, "method": {...}}' [EVERY]
METHOD is a namespace of conf/base/parameters_pretraining.yml (ijepa, mae, simclr);
its block there, with conf/base's encoder and masking, is the starting point. Keys
"encoder", "masking", "training" (TrainingConfig fields) and "method" (the method's
hyperparameters) override it; one thread per run, so two runs can share 2 cores.
`"centered_targets": true` (I-JEPA only) trains a variant that is not the paper's: each
patch's target has its mean over the batch at that position removed and is scaled to unit
RMS, so the predictor cannot lower the loss from a patch's position alone (BENCHMARKS.md,
"More steps, and targets without their positional part"). `"official_init": true` (I-JEPA
only) re-initializes the built model as the official I-JEPA code does (`official_init`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import types
from pathlib import Path

import torch
import yaml
from timm.layers import trunc_normal_

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
from selfsup.methods.ijepa import IJEPA
from selfsup.monitors import rankme
from selfsup.training import train

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
QUICK = EvaluationConfig(
    c_grid=[0.1, 1.0], max_iter=300, low_shot=LowShotConfig(shots=[5], draws=3)
)


@torch.no_grad()
def centered_target_features(self: IJEPA, images: torch.Tensor) -> torch.Tensor:
    """The paper's targets less their per-position batch mean, at unit RMS per position."""
    full = IJEPA.target_features(self, images)
    full = full - full.mean(dim=0, keepdim=True)
    return full / (full.pow(2).mean(dim=(0, 2), keepdim=True).sqrt() + 1e-6)


@torch.no_grad()
def official_init(method: IJEPA) -> None:
    """The official I-JEPA code's initialization where it differs from this project's:
    the patch-embedding convolution drawn like the linears (truncated normal, std 0.02;
    here: PyTorch's default), and in block i (from 1) of the encoder and the predictor the
    attention and MLP output projections divided by sqrt(2 i). The target encoder is
    copied from the context encoder again."""
    for module in method.modules():
        if isinstance(module, torch.nn.Conv2d):
            trunc_normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
    for part in (method.context_encoder, method.predictor):
        for i, block in enumerate(part.blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * i))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))
    method.target_encoder.load_state_dict(method.context_encoder.state_dict())


def base_parameters() -> dict:
    parameters = {}
    for name in ("parameters_pretraining.yml", "parameters_masking.yml"):
        parameters.update(yaml.safe_load((ROOT / "conf" / "base" / name).read_text()))
    return parameters


def main() -> None:
    method_name, name, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    every = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    base = base_parameters()
    block = base[method_name]
    digits = load_source("digits", {})
    split = stratified_split(digits.labels, 0.2, 0.2, SEED)
    masking = MaskingConfig(**{**base["masking"], **overrides.get("masking", {})})
    encoder = EncoderConfig(**{**base["encoder"], **overrides.get("encoder", {})})
    training = TrainingConfig(
        **{**block["training"], "num_threads": 1, **overrides.get("training", {})}
    )
    hyperparameters = {**block["hyperparameters"], **overrides.get("method", {})}
    images = resize_images(digits.images, masking.image_size)
    normalization = channel_statistics(images[split == "train"])
    x = to_model_input(images, normalization)

    def score(module: torch.nn.Module | None) -> str:
        features = x.flatten(1).numpy() if module is None else encoder_features(module, x)
        r = evaluate_features(features, digits.labels, split, QUICK, SEED)
        return (
            f"{100 * r['linear_probe']['test_accuracy']:.1f}/"
            f"{100 * r['low_shot']['5']['mean']:.1f}/{100 * r['knn']['test_accuracy']:.1f}"
            f"/rank {rankme(features):.0f}"
        )

    print(f"{name}: raw pixels {score(None)}", flush=True)
    torch.manual_seed(SEED)
    method = build_method(block["method"], hyperparameters, encoder, masking, 1, normalization)
    if overrides.get("centered_targets"):
        if not isinstance(method, IJEPA):
            raise ValueError("centered_targets is an I-JEPA variant; METHOD must be ijepa")
        method.target_features = types.MethodType(centered_target_features, method)
    if overrides.get("official_init"):
        if not isinstance(method, IJEPA):
            raise ValueError("official_init is I-JEPA's; METHOD must be ijepa")
        official_init(method)
    print(f"{name}: init {score(method.evaluation_encoder())}", flush=True)

    def on_epoch_end(epoch: int, m: torch.nn.Module) -> None:
        if (epoch + 1) % every == 0:
            context = getattr(m, "context_encoder", None)
            extra = "" if context is None else f" context {score(context)}"
            print(f"{name}: epoch {epoch + 1} {score(m.evaluation_encoder())}{extra}", flush=True)

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
