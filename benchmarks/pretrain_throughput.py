"""Pretraining step throughput, FLOPs and model FLOPs utilization of each method.

For each method of --methods (default ijepa mae simclr) at one model size (--size), the
method is built as the pipeline builds it (`selfsup.methods.build_method` with the
encoder, masking and the method's hyperparameters; the optimizer training builds,
`selfsup.training.build_optimizer`, with the method's first weight decay),
and the real training step is timed:

    inputs = method.input_sampler()(batch, draws)       # masks or views, keyed by row
    loss = method(inputs)                               # under torch.autocast(bf16) if
    loss.item()                                         #   --precision bf16
    optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
    method.after_optimizer_step(step, total_steps)

on one fixed batch of random images (uniform pixels, normalized per channel with their
own mean and std), resident on the device: batch reading and normalization, and the
training loop's RandomResizedCrop (I-JEPA, MAE) are not timed unless --crops is given;
masks and SimCLR's views are drawn in the step and timed (as with loader_workers: 0;
with loader workers they are drawn ahead of the step). --compile times the
`torch.compile`d method (the FLOP-counting steps stay eager).
--flop-steps untimed steps count FLOPs, then --warmup untimed steps, then --steps timed
steps, each timed on its own (CUDA synchronized before and after). Reported per method:
- images/s = batch size x timed steps / their total time; ms per step, median and mean;
- step time relative to I-JEPA's (median over median; I-JEPA = 1.00x);
- peak memory: CUDA `torch.cuda.max_memory_allocated` (reset before the method is built,
  so it includes weights, gradients and optimizer state); CPU the process's peak RSS
  (`ru_maxrss`), which is process-wide (torch and the project count, about 0.9 GB).
  Before each method is built, freed heap is given back to the OS (glibc `malloc_trim`)
  and, where Linux allows it, the high-water mark is reset (`/proc/self/clear_refs`), so
  each row is that method's peak on top of the process's RSS then (also printed);
- FLOPs per step, counted by `torch.utils.flop_counter.FlopCounterMode` over whole
  training steps (forward + backward; the mean over --flop-steps, as I-JEPA's FLOPs vary
  with its mask sizes): it counts matrix multiplications, convolutions and
  attention only (2 FLOPs per multiply-add); elementwise ops, normalization, softmax, the
  optimizer, the EMA update and data augmentation are not counted. Stock torch counts no
  FLOPs for the CPU attention kernel (`aten._scaled_dot_product_flash_attention_for_cpu`
  and its backward); this script registers torch's own SDPA formulas for them, and
  reports the share of attention in the count, and the count split by the outermost
  module class FlopCounterMode attributes it to (I-JEPA's context and target encoders
  share the name VisionTransformerEncoder; "outside modules" is e.g. SimCLR's
  similarity matrix);
- achieved FLOP/s = FLOPs per step / median step time, and MFU = achieved FLOP/s / peak,
  where peak is measured in the same run on the same device: the best of several timed
  square matmuls (--peak-size, default 4096 on CUDA, 2048 on CPU) in the training
  precision (bf16 or fp32 inputs). The fp32 and bf16 peaks are both measured and printed
  with their ratio.

Sizes (--size):
- default: conf/base/parameters_pretraining.yml (`encoder` and each method's
  `hyperparameters` and `training`) and conf/base/parameters_masking.yml, 1 channel (the
  embedded digits are grey);
- vit_b16: ViT-B/16 at 224 px, 3 channels (encoder 768 wide, 12 deep, 12 heads); the paper's
  I-JEPA predictor (384 wide, 12 deep, 12 heads), MAE decoder (512 wide, 8 deep, 16 heads)
  and SimCLR head (2048 hidden, 128 out); every other hyperparameter (masking strategy,
  losses, SimCLR's augmentations, optimizer settings) as in conf/base;
- tiny: a 32-wide, 1-deep encoder on 16 px images, for smoke tests.

Usage (repository root, project environment):
    python benchmarks/pretrain_throughput.py [--methods ijepa mae simclr]
        [--size default|vit_b16|tiny] [--device auto|cpu|cuda] [--precision fp32|bf16]
        [--batch-size 64] [--flop-steps 3] [--warmup 3] [--steps 10] [--peak-size N]
        [--peak-trials 5] [--threads N] [--crops] [--compile] [--seed 0] [--json PATH]
--precision defaults to bf16 on CUDA (as the training loop) and fp32 on CPU. Prints the
date, the machine, torch's version, the command and a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

# Run as a script, this folder is on sys.path.
from machine import cpu_model, write_json
from op_profile import matmul_peak, synchronize
from params import merge
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from selfsup.allocator import keep_freed_memory
from selfsup.batches import random_resized_crops
from selfsup.config import EncoderConfig, MaskingConfig, TrainingConfig
from selfsup.methods import METHODS, build_method
from selfsup.randomness import SampleDraws
from selfsup.training import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
SIZES = ("default", "vit_b16", "tiny")

# --- attention FLOPs on CPU -------------------------------------------------------------

aten = torch.ops.aten
CPU_ATTENTION = {
    "forward": getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None),
    "backward": getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None),
}


def register_cpu_attention_flops() -> list[str]:
    """Count the CPU SDPA kernel with torch's own SDPA formulas (stock torch counts
    nothing for it). Returns the ops registered here (none if torch already counts them)."""
    registered = []
    forward, backward = CPU_ATTENTION["forward"], CPU_ATTENTION["backward"]
    if forward is not None and forward not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(forward)
        def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

        registered.append(str(forward))
    if backward is not None and backward not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(backward)
        def _cpu_sdpa_backward_flop(
            grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
        ):
            return flop_counter.sdpa_backward_flop_count(
                grad_out_shape, query_shape, key_shape, value_shape
            )

        registered.append(str(backward))
    return registered


def is_attention(op) -> bool:
    name = str(op)
    return "attention" in name


# --- configurations ---------------------------------------------------------------------


def base_parameters(environment: str | None = None) -> dict:
    """conf/base's pretraining and masking parameters, with a configuration
    environment's overrides merged key by key (as Kedro's soft merge does)."""
    parameters = {}
    for name in ("parameters_pretraining.yml", "parameters_masking.yml"):
        parameters.update(yaml.safe_load((ROOT / "conf" / "base" / name).read_text()))
    if environment is not None:
        overrides = yaml.safe_load((ROOT / "conf" / environment / "parameters.yml").read_text())
        parameters = merge(parameters, overrides)
    return parameters


def configuration(size: str, methods: list[str]) -> dict:
    """Encoder, masking, channels and each method's (hyperparameters, training) for a size.
    `vit_b16` is the `kedro run --env vit_b16` recipe (conf/vit_b16/parameters.yml)."""
    base = base_parameters("vit_b16" if size == "vit_b16" else None)
    masking = dict(base["masking"])
    encoder = dict(base["encoder"])
    hyper = {name: dict(base[name]["hyperparameters"]) for name in methods}
    if size == "default":
        channels = 1
    elif size == "vit_b16":
        channels = 3
    elif size == "tiny":
        channels = 1
        masking.update(image_size=16, patch_size=2)
        encoder.update(embed_dim=32, depth=1, num_heads=2)
        sizes = {
            "ijepa": {"predictor": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
            "mae": {"decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
            "simclr": {"projection_head": {"hidden_dim": 64, "out_dim": 32}},
        }
        for name in methods:
            hyper[name].update(sizes.get(name, {}))
    else:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
    return {
        "encoder": EncoderConfig(**encoder),
        "masking": MaskingConfig(**masking),
        "channels": channels,
        "hyperparameters": hyper,
        "training": {name: TrainingConfig(**base[name]["training"]) for name in methods},
    }


def describe(config: dict, methods: list[str]) -> list[str]:
    enc, masking = config["encoder"], config["masking"]
    lines = [
        f"encoder ViT {enc.embed_dim} wide, {enc.depth} deep, {enc.num_heads} heads, "
        f"mlp_ratio {enc.mlp_ratio}; images {masking.image_size}x{masking.image_size}x"
        f"{config['channels']}, patch {masking.patch_size} ({masking.num_patches} patches), "
        f"masking {masking.strategy}"
    ]
    for name in methods:
        hyper = config["hyperparameters"][name]
        parts = {
            "ijepa": "predictor",
            "mae": "decoder",
            "simclr": "projection_head",
        }
        key = parts.get(name)
        detail = f"{key} {json.dumps(hyper[key])}" if key in hyper else json.dumps(hyper)
        lines.append(f"{name}: {detail}")
    return lines


# --- measurement --------------------------------------------------------------------------


def random_batch(batch_size: int, channels: int, size: int, device: torch.device):
    """Uniform [0, 1] pixels normalized per channel with their own mean and std."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch_size, channels, size, size, generator=generator)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3))
    batch = (pixels - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    normalization = {"mean": mean.tolist(), "std": std.tolist()}
    return batch.to(device), normalization


def reset_peak_rss() -> bool:
    """Give freed heap memory back to the OS (glibc's malloc_trim), then reset the
    process's RSS high-water mark (Linux >= 4.0); False if the reset is not allowed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(
    name: str,
    config: dict,
    args,
    device: torch.device,
    bf16: bool,
    after_step: Callable[[], None] | None = None,
) -> dict:
    """One method's training step: FLOPs, time, memory. `after_step` is called after
    every step (e.g. a profiler's `step`, so that it can leave out the set-up)."""
    gc.collect()
    rss_reset = False
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss_reset = reset_peak_rss()
    baseline_rss_kib = current_rss_kib()
    torch.manual_seed(args.seed)
    images, normalization = random_batch(
        args.batch_size, config["channels"], config["masking"].image_size, device
    )
    method = build_method(
        name,
        config["hyperparameters"][name],
        config["encoder"],
        config["masking"],
        in_chans=config["channels"],
        normalization=normalization,
    ).to(device)
    method.train()
    training = config["training"][name]
    optimizer = build_optimizer(method, training)
    for group in optimizer.param_groups:
        if group["apply_weight_decay"]:
            group["weight_decay"] = training.weight_decay[0]
    crop_scale = training.crop_scale if args.crops else None
    total_steps = args.flop_steps + args.warmup + args.steps
    step = 0
    input_sampler = method.input_sampler()
    compiled = torch.compile(method) if args.compile else method

    def training_step(model: torch.nn.Module = compiled) -> float:
        nonlocal step
        draws = SampleDraws(args.seed, 0, step, np.arange(args.batch_size))
        batch = images
        if crop_scale is not None:
            batch = random_resized_crops(images, crop_scale, draws)
        inputs = {
            k: v.to(device, non_blocking=True) for k, v in input_sampler(batch, draws).items()
        }
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(inputs)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: loss {value} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, total_steps)
        step += 1
        if after_step is not None:
            after_step()
        return value

    # Untimed steps under the FLOP counter (it slows a step down). I-JEPA's FLOPs vary
    # from step to step with the sizes of its masks: the mean over --flop-steps is used.
    step_flops, attention, parts = [], 0, {}
    for _ in range(args.flop_steps):
        counter = FlopCounterMode(display=False)
        with counter:
            training_step(method)  # eager: the counter sees every operation
        counts = counter.get_flop_counts()
        step_flops.append(counter.get_total_flops())
        attention += sum(n for op, n in counts.get("Global", {}).items() if is_attention(op))
        # FlopCounterMode names modules by class from the outermost module called (the
        # method itself is never called, only its parts), so I-JEPA's context and target
        # encoders share the name VisionTransformerEncoder.
        outer = {
            module: sum(ops.values())
            for module, ops in counts.items()
            if module != "Global" and "." not in module
        }
        outer["outside modules"] = step_flops[-1] - sum(outer.values())
        for module, n in outer.items():
            parts[module] = parts.get(module, 0) + n
    flops = statistics.fmean(step_flops)
    attention_flops = attention / args.flop_steps
    parts = {module: n / args.flop_steps for module, n in parts.items() if n}

    for _ in range(args.warmup):
        training_step()
    times = []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        training_step()
        synchronize(device)
        times.append(time.perf_counter() - start)

    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(device)
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    median = statistics.median(times)
    result = {
        "method": name,
        "parameters": sum(p.numel() for p in method.parameters()),
        "trainable_parameters": sum(p.numel() for p in method.parameters() if p.requires_grad),
        "batch_size": args.batch_size,
        "step_times_s": times,
        "median_step_s": median,
        "mean_step_s": statistics.fmean(times),
        "images_per_s": args.batch_size * len(times) / sum(times),
        "peak_memory_bytes": peak_memory,
        "peak_memory_kind": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "process peak RSS" + (" (reset before the method)" if rss_reset else ""),
        "baseline_rss_bytes": baseline_rss_kib * 1024 if device.type != "cuda" else None,
        "flops_per_step": flops,
        "flops_per_counted_step": step_flops,
        "attention_flops_per_step": attention_flops,
        "flops_by_part": parts,
        "achieved_flops_per_s": flops / median,
    }
    return result


# --- report -------------------------------------------------------------------------------


def flop_unit(device: torch.device) -> tuple[str, float]:
    return ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)


def table(rows: list[dict], peak: float, device: torch.device) -> str:
    unit, scale = flop_unit(device)
    memory = "peak memory MiB (CUDA allocated)" if device.type == "cuda" else "peak RSS MiB"
    header = (
        f"| method | params M (trainable) | images/s | ms/step median | ms/step mean "
        f"| step time vs I-JEPA | {memory} | GFLOP/step (attention %) | achieved {unit} "
        f"| MFU |"
    )
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    reference = next((row["median_step_s"] for row in rows if row["method"] == "ijepa"), None)
    for row in rows:
        relative = f"{row['median_step_s'] / reference:.2f}x" if reference else "–"
        attention = 100 * row["attention_flops_per_step"] / max(row["flops_per_step"], 1)
        lines.append(
            f"| {row['method']} | {row['parameters'] / 1e6:.2f} "
            f"({row['trainable_parameters'] / 1e6:.2f}) | {row['images_per_s']:,.0f} "
            f"| {1e3 * row['median_step_s']:.1f} | {1e3 * row['mean_step_s']:.1f} "
            f"| {relative} | {row['peak_memory_bytes'] / MIB:,.0f} "
            f"| {row['flops_per_step'] / 1e9:,.2f} ({attention:.1f}) "
            f"| {row['achieved_flops_per_s'] / scale:,.1f} "
            f"| {100 * row['achieved_flops_per_s'] / peak:.1f} % |"
        )
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=["ijepa", "mae", "simclr"], choices=sorted(METHODS)
    )
    parser.add_argument("--size", choices=SIZES, default="default")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--flop-steps", type=int, default=3, help="untimed steps whose FLOPs are counted"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the FLOP count")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument(
        "--peak-size", type=int, help="matmul side for the peak (default 4096 CUDA, 2048 CPU)"
    )
    parser.add_argument("--peak-trials", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--crops", action="store_true", help="also time the loop's RandomResizedCrop"
    )
    parser.add_argument(
        "--compile", action="store_true", help="time the torch.compile'd method (training.compile)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    keep_freed_memory()  # as training does before its first step
    if args.steps < 1 or args.flop_steps < 1 or args.warmup < 0 or args.batch_size < 2:
        parser.error("--steps and --flop-steps must be >= 1, --warmup >= 0, --batch-size >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    bf16 = precision == "bf16"
    peak_size = args.peak_size or (4096 if device.type == "cuda" else 2048)
    methods = list(dict.fromkeys(args.methods))
    command = " ".join(["python benchmarks/pretrain_throughput.py", *sys.argv[1:]])
    registered = register_cpu_attention_flops()

    config = configuration(args.size, methods)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best, rates = matmul_peak(device, dtype, peak_size, args.peak_trials)
        peaks[name] = {"best": best, "trials": rates}
        print(f"{name} {peak_size}x{peak_size} matmul: best {best / 1e9:,.1f} GFLOP/s", flush=True)
    peak = peaks[precision]["best"]

    rows = []
    for name in methods:
        row = measure(name, config, args, device, bf16)
        rows.append(row)
        print(
            f"{name}: {row['images_per_s']:,.0f} images/s, "
            f"{1e3 * row['median_step_s']:.1f} ms/step median",
            flush=True,
        )

    unit, scale = flop_unit(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"\n## pretraining step throughput: size {args.size}, {device_name(device)}, {precision}")
    print(f"- date: {time.strftime('%Y-%m-%d')}")
    print(
        f"- machine: {cpu_model()}, {os.cpu_count()} cores (torch threads "
        f"{torch.get_num_threads()}), GPU {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, fp32 matmul precision "
        f"{torch.get_float32_matmul_precision()}"
    )
    print(f"- command: {command}")
    for line in describe(config, methods):
        print(f"- {line}")
    print(
        f"- batch {args.batch_size}; {args.flop_steps} FLOP-counting steps, "
        f"{args.warmup} warm-up steps, "
        f"{args.steps} timed steps per method; "
        + ("the loop's crops timed" if args.crops else "crops of the loop not timed")
        + (", torch.compile" if args.compile else "")
    )
    print(
        f"- MFU peak ({precision}, best of {args.peak_trials} timings of "
        f"{peak_size}x{peak_size} matmuls, this run, this device): {peak / scale:,.1f} {unit}"
    )
    print()
    print(table(rows, peak, device))
    print()
    print(
        f"- FLOPs: FlopCounterMode over whole training steps (forward + backward), mean "
        f"of {args.flop_steps}; matmul, convolution and attention FLOPs only (optimizer, "
        "EMA, elementwise ops, augmentation not counted)"
        + (
            "; attention on CPU counted with torch's SDPA formula registered here for "
            + ", ".join(registered)
            if registered
            else ""
        )
    )
    if device.type != "cuda":
        print(
            "- peak RSS is process-wide (`ru_maxrss`): it includes torch, the project and "
            "every allocation of the process; "
            + (
                "before each method was built, freed heap was returned (malloc_trim) and "
                "the high-water mark reset"
                if all("reset" in row["peak_memory_kind"] for row in rows)
                else "it could not be reset, so each row is the maximum over it and the rows before"
            )
        )
    for row in rows:
        parts = ", ".join(f"{part} {n / 1e9:,.2f}" for part, n in row["flops_by_part"].items())
        extra = (
            f"; RSS before building it {row['baseline_rss_bytes'] / MIB:,.0f} MiB"
            if row["baseline_rss_bytes"]
            else ""
        )
        counted = row["flops_per_counted_step"]
        spread = (
            f" (counted steps {min(counted) / 1e9:,.2f} to {max(counted) / 1e9:,.2f})"
            if max(counted) != min(counted)
            else ""
        )
        print(f"- {row['method']}: GFLOP/step by module class: {parts}{spread}{extra}")
    print()
    ratio = peaks["bf16"]["best"] / peaks["fp32"]["best"]
    print(f"### {peak_size}x{peak_size} matmul peak on {device_name(device)}")
    print()
    print("| precision | best GFLOP/s | all timings GFLOP/s |")
    print("|---|---|---|")
    for name in ("fp32", "bf16"):
        trials = ", ".join(f"{rate / 1e9:,.0f}" for rate in peaks[name]["trials"])
        print(f"| {name} | {peaks[name]['best'] / 1e9:,.1f} | {trials} |")
    print(f"\nbf16 / fp32 = {ratio:.2f}x")

    if args.json:
        write_json(
            args.json,
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": cpu_model(),
                "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "gpu": gpu,
                "torch": torch.__version__,
                "command": command,
                "size": args.size,
                "device": str(device),
                "precision": precision,
                "configuration": describe(config, methods),
                "matmul_peak": {"size": peak_size, **peaks, "bf16_over_fp32": ratio},
                "mfu_peak_flops_per_s": peak,
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
