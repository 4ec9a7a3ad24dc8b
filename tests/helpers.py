"""Tiny configurations and models shared by the tests."""

from __future__ import annotations

import math

import numpy as np
import torch

from selfsup.config import EncoderConfig, MaskingConfig, TrainingConfig
from selfsup.methods import build_method
from selfsup.randomness import SampleDraws

TINY_ENCODER = EncoderConfig(embed_dim=32, depth=1, num_heads=2)
TINY_PREDICTOR = {"embed_dim": 16, "depth": 1, "num_heads": 2}
# 16 / 2 -> an 8x8 grid, the grid the default multi-block parameters are made for.
TINY_MASKING = MaskingConfig(image_size=16, patch_size=2)


def make_ijepa(seed: int = 0, **hyperparameters):
    """A tiny I-JEPA on 1-channel 16x16 images, initialized from `seed`."""
    torch.manual_seed(seed)
    params = {"predictor": TINY_PREDICTOR, **hyperparameters}
    return build_method("ijepa", params, TINY_ENCODER, TINY_MASKING, in_chans=1)


def tiny_training(**overrides) -> TrainingConfig:
    """Tests compare runs (resumed, accumulated, distributed) to float32 tolerance, on
    any CPU: `precision: auto` would pick bf16 on some and change that tolerance."""
    values = {
        "device": "cpu",
        "precision": "fp32",
        "epochs": 2,
        "batch_size": 16,
        "warmup_epochs": 1,
        "lr": 1e-3,
        "start_lr": 1e-4,
        "final_lr": 1e-6,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def expected_block_dims(scale: float, aspect_ratio: float, grid: int) -> tuple[int, int]:
    """Block height and width written out from the formula, independently of the code:
    h = round(sqrt(s * N * a)), w = round(sqrt(s * N / a)), clipped to [1, grid]."""
    n = grid * grid
    height = round(math.sqrt(scale * n * aspect_ratio))
    width = round(math.sqrt(scale * n / aspect_ratio))
    return min(max(height, 1), grid), min(max(width, 1), grid)


def block_dim_bounds(
    scale: tuple[float, float], aspect_ratio: tuple[float, float], grid: int
) -> tuple[int, int, int, int]:
    """(h_min, h_max, w_min, w_max) over the scale and aspect-ratio ranges.

    round(sqrt(.)) and clipping are monotone, so height grows with scale and aspect
    ratio and width grows with scale and shrinks with aspect ratio: the extremes are at
    the corners of the ranges.
    """
    (s_lo, s_hi), (a_lo, a_hi) = scale, aspect_ratio
    h_min = expected_block_dims(s_lo, a_lo, grid)[0]
    h_max = expected_block_dims(s_hi, a_hi, grid)[0]
    w_min = expected_block_dims(s_lo, a_hi, grid)[1]
    w_max = expected_block_dims(s_hi, a_lo, grid)[1]
    return h_min, h_max, w_min, w_max


# Parameter overrides (nested, on top of conf/base) that make a whole `kedro run` or
# `dvc repro` take seconds: one epoch, a 32-wide 1-block encoder, small heads.
# float32 on every CPU, so runs compare to one tolerance wherever the tests run.
_TINY_TRAINING = {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "precision": "fp32"}
TINY_RUN = {
    "ijepa": {
        "training": _TINY_TRAINING,
        "hyperparameters": {"predictor": {"embed_dim": 16, "num_heads": 2, "depth": 1}},
    },
    "mae": {
        "training": _TINY_TRAINING,
        "hyperparameters": {"decoder": {"embed_dim": 16, "num_heads": 2, "depth": 1}},
    },
    "simclr": {
        "training": _TINY_TRAINING,
        "hyperparameters": {"projection_head": {"hidden_dim": 32, "out_dim": 16}},
    },
    "lejepa": {
        "training": _TINY_TRAINING,
        "hyperparameters": {
            "views": 2,
            "projector": {"hidden_dim": 32, "out_dim": 8},
            "sigreg": {"directions": 32},
        },
    },
    "encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "masking": {"stats_num_masks": 1000},
    "evaluation": {"c_grid": [0.1, 1.0], "low_shot": {"draws": 2}},
}


def draws_for(images, seed: int = 0) -> SampleDraws:
    """The draws of rows 0..len(images)-1 at epoch 0, step 0."""
    return SampleDraws(seed, 0, 0, np.arange(len(images)))


def pretraining_run(namespace: str) -> tuple[str, ...]:
    """`kedro` arguments that pretrain one method with the parameters of run.yml."""
    return ("run", "--config", "run.yml", "--pipelines", "pretraining", "--namespaces", namespace)


def assert_same_weights(actual: dict, expected: dict, atol: float, rtol: float) -> None:
    """Every tensor of `expected` close to the same-named one of `actual`, except the key
    third of each attention qkv bias. Softmax ignores a shift shared by every key, so that
    bias has no gradient in exact arithmetic (tests/models/test_vit.py checks it); what it
    gets is rounding noise, which Adam turns into lr-sized steps that change with the order
    of float sums (threads, processes, compilation)."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        got = actual[name]
        if name.endswith("attn.qkv.bias"):
            third = value.numel() // 3
            for part in (slice(0, third), slice(2 * third, None)):
                torch.testing.assert_close(got[part], value[part], atol=atol, rtol=rtol, msg=name)
        else:
            torch.testing.assert_close(got, value, atol=atol, rtol=rtol, msg=name)
