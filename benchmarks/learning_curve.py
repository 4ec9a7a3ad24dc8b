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
"More steps, and targets without their positional part"). `"official_init": true`
re-initializes the built model as the official code of I-JEPA (`official_init`) or of MAE
(`xavier_init`) does; `"xavier_init": true` gives any method MAE's initialization.
`"misalign": P` (any method) replaces the embedded digits' alignment: each digit is resized
to (size - P) px and pasted on a black size x size canvas at an offset of 0..P px per axis,
drawn once per image from the seed (a fixed dataset, not an augmentation), so pixel
distance no longer lines strokes up (BENCHMARKS.md, "Digits moved off-centre").

The commands in BENCHMARKS.md dated before the xavier default (2026-11-24, "Weight
initialization") ran with std-0.02 linears: add `"encoder": {"weight_init": "trunc_normal"}`
to repeat them.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
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
from selfsup.methods.mae import MAE
from selfsup.models.vit import init_weights
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


def misaligned(images: np.ndarray, size: int, margin: int, seed: int) -> np.ndarray:
    """Each image resized to size - margin and pasted at its own offset in 0..margin."""
    small = resize_images(images, size - margin)
    out = np.zeros((len(images), size, size, images.shape[3]), dtype=np.uint8)
    offsets = np.random.default_rng(seed).integers(0, margin + 1, size=(len(images), 2))
    for row, (top, left) in enumerate(offsets):
        out[row, top : top + size - margin, left : left + size - margin] = small[row]
    return out


@torch.no_grad()
def official_init(method: IJEPA) -> None:
    """The official I-JEPA code's initialization where it differs from this project's
    `trunc_normal` (which `main` builds with): the patch-embedding convolution drawn like
    the linears (truncated normal, std 0.02; here: PyTorch's default), and in block i
    (from 1) of the encoder and the predictor the attention and MLP output projections
    divided by sqrt(2 i). The target encoder is
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


@torch.no_grad()
def xavier_init(method: torch.nn.Module) -> None:
    """The official MAE code's initialization where it differs from this project's:
    every linear xavier-uniform instead of truncated normal std 0.02, and the
    patch-embedding convolution xavier-uniform as if it were a linear. An I-JEPA target
    encoder is copied from the context encoder again. Modules in `modules()` order, so
    the draws are those of the recorded runs."""
    for module in method.modules():
        init_weights(module, "xavier")
    if isinstance(method, IJEPA):
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
    encoder_values = {**base["encoder"], **overrides.get("encoder", {})}
    if overrides.get("official_init") and block["method"] == "ijepa":
        # The official I-JEPA linears: std 0.02, whatever conf/base's default.
        encoder_values["weight_init"] = "trunc_normal"
    encoder = EncoderConfig(**encoder_values)
    training = TrainingConfig(
        **{**block["training"], "num_threads": 1, **overrides.get("training", {})}
    )
    hyperparameters = {**block["hyperparameters"], **overrides.get("method", {})}
    margin = overrides.get("misalign", 0)
    images = (
        misaligned(digits.images, masking.image_size, margin, SEED)
        if margin
        else resize_images(digits.images, masking.image_size)
    )
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
        if isinstance(method, IJEPA):
            official_init(method)
        elif isinstance(method, MAE):
            xavier_init(method)
        else:
            raise ValueError("official_init exists for ijepa and mae; METHOD is neither")
    if overrides.get("xavier_init"):
        xavier_init(method)
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
