"""Where a profiled step's time goes (benchmarks/op_profile.py), and step_speed.py's
--profile on a real training step."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("op_profile", ROOT / "benchmarks" / "op_profile.py")
op_profile = importlib.util.module_from_spec(_spec)
sys.modules["op_profile"] = op_profile  # its dataclass looks its module up there
_spec.loader.exec_module(op_profile)


def test_operators_fall_into_products_copies_or_the_rest():
    assert op_profile.part_of("aten::addmm") == "products"
    assert op_profile.part_of("aten::bmm") == "products"
    assert op_profile.part_of("aten::copy_") == "copies"
    assert op_profile.part_of("aten::index_select") == "copies"
    assert op_profile.part_of("aten::gelu") == "rest"
    assert op_profile.part_of("Optimizer.step#AdamW.step") == "rest"


def test_product_flops_per_step_match_the_shapes_once_each_under_autocast():
    # Autocast dispatches bmm twice (its wrapper, then the kernel): counted once.
    x, w, b = torch.randn(256, 64), torch.randn(32, 64), torch.randn(32)
    p, q = torch.randn(4, 16, 8), torch.randn(4, 8, 16)
    steps = 3
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                F.gelu(F.linear(x, w, b))
                torch.bmm(p, q)
    summary = op_profile.summarize(prof.events(), steps)
    assert summary.product_flops == pytest.approx(2 * 256 * 64 * 32 + 2 * 4 * 16 * 8 * 16)
    assert summary.seconds["products"] > 0
    assert summary.seconds["copies"] > 0  # autocast's casts to bf16
    assert "aten::gelu" in dict(summary.top_rest)
    assert summary.total_s == pytest.approx(sum(summary.seconds.values()))
    assert sum(summary.share(part) for part in op_profile.PARTS) == pytest.approx(1.0)


def test_the_ceiling_compares_images_per_second_at_either_batch():
    # Baseline: 100 images/s. Current: 128 images whose products take 0.4 s -> 320
    # images/s; 1e11 FLOPs at 5e11 FLOP/s take 0.2 s -> 640 images/s.
    bound = op_profile.ceiling(
        baseline_images_per_s=100.0,
        batch_size=128,
        products_s=0.4,
        product_flops=1.0e11,
        peak_flops_per_s=5.0e11,
    )
    assert bound["products_only_speedup"] == pytest.approx(3.2)
    assert bound["at_peak_s"] == pytest.approx(0.2)
    assert bound["at_peak_speedup"] == pytest.approx(6.4)


def test_the_matmul_peak_is_the_best_of_its_trials():
    best, rates = op_profile.matmul_peak(torch.device("cpu"), torch.float32, 128, trials=3)
    assert len(rates) == 3
    assert best == max(rates) > 0


def _blocks_flops(tokens: int, length: int, width: int, depth: int, mlp_ratio: float) -> int:
    """Forward FLOPs of `depth` ViT blocks on `tokens` tokens in sequences of `length`:
    qkv and output projections, the MLP, and attention's two products."""
    projections = tokens * 2 * depth * (4 + 2 * mlp_ratio) * width * width
    attention = depth * (tokens // length) * 2 * (2 * length * length * width)
    return int(projections + attention)


def _mae_step_flops(pretraining: dict, masking: dict, batch: int) -> int:
    """The products of one MAE training step, from the config: the encoder on the
    visible patches, the decoder on every patch; backward computes two products per
    forward one, except the patch embedding's, whose input needs no gradient."""
    encoder, mae = pretraining["encoder"], pretraining["mae"]["hyperparameters"]
    decoder = mae["decoder"]
    patches = (masking["image_size"] // masking["patch_size"]) ** 2
    pixels = masking["patch_size"] ** 2  # one channel
    visible = round(patches * (1 - mae["mask_ratio"]))
    width, dec_width = encoder["embed_dim"], decoder["embed_dim"]
    embedding = batch * patches * 2 * pixels * width
    forward = (
        embedding
        + _blocks_flops(batch * visible, visible, width, encoder["depth"], encoder["mlp_ratio"])
        + batch * visible * 2 * width * dec_width
        + _blocks_flops(batch * patches, patches, dec_width, decoder["depth"], 4.0)
        + batch * patches * 2 * dec_width * pixels
    )
    return 3 * forward - embedding


def test_step_speed_profiles_a_real_mae_step():
    """The worker of step_speed.py, on this tree's MAE at the default config: the
    profiled products' FLOPs are those the config implies, and the parts fit in the
    step's wall time."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "step_speed.py"),
        "--worker",
        "--tree",
        str(ROOT),
        "--config",
        "default",
        "--method",
        "mae",
        "--device",
        "cpu",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--profile",
        "1",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    record = json.loads(
        next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]
    )
    profiled = record["profile"]
    pretraining = yaml.safe_load((ROOT / "conf/base/parameters_pretraining.yml").read_text())
    masking = yaml.safe_load((ROOT / "conf/base/parameters_masking.yml").read_text())["masking"]
    expected = _mae_step_flops(pretraining, masking, record["batch_size"])
    assert profiled["product_flops"] == pytest.approx(expected, rel=0.001)
    parts = sum(profiled["seconds"].values()) + profiled["outside_operators_s"]
    assert parts == pytest.approx(profiled["profiled_step_s"], rel=0.05)
    assert profiled["gemm_peak_flops_per_s"] > 0


def test_step_speed_refuses_to_profile_a_cuda_step_before_any_run(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "step_speed.py"),
            "--device",
            "cuda",
            "--profile",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "--profile profiles the CPU step only; add --device cpu" in done.stderr
    assert "images/s" not in done.stdout
