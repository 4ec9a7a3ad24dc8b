"""Every GPU check of the project in one call, written as JSON and a short text table.

1. Step throughput of I-JEPA, MAE, SimCLR and LeJEPA at ViT-B/16, 224 px (`conf/vit_b16`), the
   largest batch of --vit-batches that fits, eager and torch.compile'd, in the precision
   `training.precision: auto` picks (bf16 on CUDA), with FLOPs per step counted by
   torch's FlopCounterMode and MFU against a bf16 matmul timed in the same run
   (`pretrain_throughput.py` does the measuring).
2. The same at the default small config (conf/base, 1 channel, 32 px).
3. The default digits experiment trained through the core API (`selfsup.pretraining`,
   the code the pretraining node runs, without Kedro or dvclive): every method with
   conf/base's epochs, then features and the probes; linear / 1-shot / 5-shot / kNN set
   beside a CPU run's metrics.json (--reference).
4. Peak GPU memory per method (steps and digits training).

Sections run in the order 1 eager, 2 eager, 3, 2 compiled, 1 compiled; a section that
would start after --budget-s seconds is recorded as skipped, and the files are rewritten
after every item, so a run cut short still returns what it measured.

Usage (repository root):
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR [--budget-s 420]
        [--reference data/08_reporting/metrics.json] [--commit SHA]
    python benchmarks/gpu_check.py --device cpu --steps 2 --out DIR   # the CPU dry run
On the CPU the dry run uses batch 2 at ViT-B/16, one epoch per method for the digits,
compiles only the default config, and its numbers mean nothing: it checks the script.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

# Run as a script, this folder is on sys.path.
from machine import cpu_model, write_json
from pretrain_throughput import configuration, matmul_peak, measure, register_cpu_attention_flops

from selfsup.config import (
    EncoderConfig,
    EvaluationConfig,
    FeatureConfig,
    IngestionConfig,
    MaskingConfig,
    PretrainingConfig,
)
from selfsup.data.preprocessing import NormalizedImages, channel_statistics, resize_images
from selfsup.data.samples import labelled_samples
from selfsup.data.sources import load_source
from selfsup.data.splits import evaluated_rows, pretraining_rows
from selfsup.evaluation import encoder_features, evaluate_features
from selfsup.models.vit import encoder_from_checkpoint
from selfsup.precision import trains_in_bf16
from selfsup.pretraining import pretrain_encoder

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ijepa", "mae", "simclr", "lejepa")
MIB = 2**20


class Budget:
    """Seconds left of --budget-s; sections that would start late are skipped."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, needed_s: float) -> bool:
        return self.elapsed() + needed_s <= self.seconds


class Report:
    """The results so far, rewritten to DIR/gpu_check.json and .txt after every item."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out = out
        self.record = {**header, "matmul": None, "steps": [], "digits": [], "skipped": []}

    def save(self) -> None:
        write_json(self.out / "gpu_check.json", self.record)
        (self.out / "gpu_check.txt").write_text(render(self.record) + "\n")


# --- 1, 2: training steps ---------------------------------------------------------------


def time_step(size: str, method: str, batches: list[int], compiled: bool, args, device, bf16):
    """`measure` at the first batch of `batches` that fits in memory."""
    config = configuration(size, [method])
    for batch_size in batches:
        settings = argparse.Namespace(
            batch_size=batch_size,
            seed=0,
            flop_steps=args.flop_steps,
            warmup=args.warmup + (args.compile_warmup if compiled else 0),
            steps=args.steps,
            crops=False,
            compile=compiled,
        )
        torch._dynamo.reset()
        start = time.perf_counter()
        try:
            row = measure(method, config, settings, device, bf16)
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            print(f"{size} {method}: batch {batch_size} does not fit", flush=True)
            continue
        except Exception as error:  # noqa: BLE001 - a failed item is a result; go on
            last_line = (str(error).strip().splitlines() or [""])[-1]
            message = f"{type(error).__name__}: {last_line[:300]}"
            print(f"{size} {method}: failed: {message}", flush=True)
            return {"size": size, "method": method, "compiled": compiled, "error": message}
        row.update(size=size, compiled=compiled, wall_s=time.perf_counter() - start, bf16=bf16)
        return row
    return {"size": size, "method": method, "compiled": compiled, "error": "no batch fits"}


def step_items(args, device) -> dict[str, list[tuple[str, str, list[int], bool]]]:
    vit_batches = args.vit_batches or ([256, 128] if device.type == "cuda" else [2])
    default_batch = [args.default_batch]
    compiled_sizes = args.compile_sizes or (
        ["default", "vit_b16"] if device.type == "cuda" else ["default"]
    )
    batches = {"vit_b16": vit_batches, "default": default_batch}

    def items(sizes: list[str], compiled: bool):
        return [(size, m, batches[size], compiled) for size in sizes for m in args.methods]

    return {
        "eager": items(["vit_b16", "default"], False),
        "compiled": items(compiled_sizes, True) if not args.no_compile else [],
    }


def profile_step(size: str, method: str, batch_size: int, device, bf16, out: Path) -> None:
    """The kernels of 3 eager steps, heaviest first, to DIR/profile_<size>_<method>.txt.
    The model's set-up and the first steps are left out (the profiler's schedule waits
    for them): moving the model to the GPU is one large copy, not the step's."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    settings = argparse.Namespace(
        batch_size=batch_size, seed=0, flop_steps=1, warmup=2, steps=3, crops=False, compile=False
    )
    # The FLOP-counting step and the first warm-up step wait; the second warms the
    # profiler up; the 3 timed steps are recorded.
    schedule = torch.profiler.schedule(wait=2, warmup=1, active=settings.steps)
    # verbose: Python source lines are recorded with the events (torch 2.x needs it).
    stacks = torch._C._profiler._ExperimentalConfig(verbose=True)
    with torch.profiler.profile(
        activities=activities, schedule=schedule, with_stack=True, experimental_config=stacks
    ) as profiler:
        measure(method, configuration(size, [method]), settings, device, bf16, profiler.step)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=25)
    # The same events by the Python lines that issued them: where copies come from.
    by_line = profiler.key_averages(group_by_stack_n=4).table(sort_by=sort, row_limit=40)
    (out / f"profile_{size}_{method}.txt").write_text(table + "\n\n" + by_line + "\n")


# --- 3: the digits experiment through the core API ----------------------------------------


def load_parameters() -> dict:
    params: dict = {}
    for path in sorted((ROOT / "conf" / "base").glob("parameters*.yml")):
        params.update(yaml.safe_load(path.read_text()) or {})
    return params


def digits_dataset(params: dict) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """The ingestion and masking pipelines' outputs for conf/base: images at the model's
    size, the samples table, and the normalization of the pretraining rows."""
    ingestion = IngestionConfig(**params["ingestion"])
    masking = MaskingConfig(**params["masking"])
    source = load_source(ingestion.source, ingestion.options, masking.image_size)
    samples = labelled_samples(source, ingestion, params["seed"])
    images = resize_images(np.asarray(source.images), masking.image_size)
    return images, samples, channel_statistics(images, pretraining_rows(samples))


def train_and_probe(method: str, data: tuple, params: dict, args, device) -> dict:
    images, samples, normalization = data
    block = json.loads(json.dumps(params[method]))
    block["training"]["device"] = device.type
    if args.digits_epochs:
        block["training"]["epochs"] = args.digits_epochs
        block["training"]["warmup_epochs"] = min(
            block["training"]["warmup_epochs"], args.digits_epochs - 1
        )
    pretraining = PretrainingConfig(**block)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = pretrain_encoder(
        images,
        samples,
        normalization,
        EncoderConfig(**params["encoder"]),
        MaskingConfig(**params["masking"]),
        pretraining,
        params["seed"],
    )
    checkpoint, history = result.checkpoint, result.history
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    pretrain_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    features = FeatureConfig(**params["features"])
    rows = evaluated_rows(samples)
    encoder = encoder_from_checkpoint(checkpoint).to(device)
    matrix = encoder_features(
        encoder,
        NormalizedImages(images, normalization, rows),
        features.pooling,
        features.batch_size,
        features.grid_cells,
    )
    labelled = samples[rows]
    metrics = evaluate_features(
        matrix,
        labelled["label"].to_numpy(),
        labelled["split"].to_numpy(),
        EvaluationConfig(**params["evaluation"]),
        params["seed"],
    )
    steps = len(history)
    return {
        "method": method,
        "epochs": pretraining.training.epochs,
        "steps": steps,
        "batch_size": pretraining.training.batch_size,
        "train_images": int(pretraining_rows(samples).sum()),
        "pretrain_s": pretrain_s,
        "images_per_s": steps * pretraining.training.batch_size / pretrain_s,
        "final_loss": float(history["loss"].iloc[-1]),
        "peak_memory_bytes": peak,
        "metrics": metrics,
        "total_s": time.perf_counter() - start,
    }


def protocol_scores(metrics: dict) -> dict[str, float]:
    return {
        "linear": metrics["linear_probe"]["test_accuracy"],
        "1-shot": metrics["low_shot"]["1"]["mean"],
        "5-shot": metrics["low_shot"]["5"]["mean"],
        "kNN": metrics["knn"]["test_accuracy"],
    }


# --- report ---------------------------------------------------------------------------------


def render(record: dict) -> str:
    lines = [
        f"# GPU check, {record['date']}, commit {record['commit']}",
        f"- {record['device_name']}; torch {record['torch']}, Python {record['python']}; "
        f"CPU {record['cpu']} ({record['cores']} cores); command: {record['command']}",
    ]
    matmul = record["matmul"]
    if matmul:
        lines.append(
            f"- bf16 matmul {matmul['size']}^3: {matmul['best'] / 1e12:,.1f} TFLOP/s "
            "(the MFU denominator)"
        )
    if record["steps"]:
        lines += [
            "",
            "| config | method | mode | batch | images/s | ms/step | TFLOP/s | MFU "
            "| peak memory MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in record["steps"]:
            mode = "compiled" if row["compiled"] else "eager"
            if "error" in row:
                lines.append(f"| {row['size']} | {row['method']} | {mode} | {row['error']} |||||")
                continue
            mfu = row["achieved_flops_per_s"] / matmul["best"]
            lines.append(
                f"| {row['size']} | {row['method']} | {mode} | {row['batch_size']} "
                f"| {row['images_per_s']:,.0f} | {1e3 * row['median_step_s']:.1f} "
                f"| {row['achieved_flops_per_s'] / 1e12:,.1f} | {100 * mfu:.1f} % "
                f"| {row['peak_memory_bytes'] / MIB:,.0f} |"
            )
    if record["digits"]:
        reference = record.get("reference") or {}
        lines += [
            "",
            "| digits | epochs | pretraining s | images/s | peak memory MiB "
            "| linear | 1-shot | 5-shot | kNN | CPU reference (linear / 1 / 5 / kNN) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in record["digits"]:
            scores = protocol_scores(row["metrics"])
            cpu = reference.get(row["method"])
            cpu_text = " / ".join(f"{100 * v:.1f}" for v in cpu.values()) if cpu else "–"
            peak = row["peak_memory_bytes"]
            peak_text = f"{peak / MIB:,.0f}" if peak else "–"
            lines.append(
                f"| {row['method']} | {row['epochs']} | {row['pretrain_s']:.1f} "
                f"| {row['images_per_s']:,.0f} | {peak_text} "
                + "".join(f"| {100 * v:.1f} " for v in scores.values())
                + f"| {cpu_text} |"
            )
    for skipped in record["skipped"]:
        lines.append(f"- skipped: {skipped}")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def reference_scores(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return {m: protocol_scores(metrics[m]) for m in METHODS if m in metrics}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and text")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per item")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--compile-warmup", type=int, default=10, help="extra warm-up steps when compiled"
    )
    parser.add_argument("--flop-steps", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--vit-batches", type=int, nargs="+", help="default 256 128 (CPU: 2)")
    parser.add_argument("--default-batch", type=int, default=64)
    parser.add_argument("--compile-sizes", nargs="*", choices=("vit_b16", "default"))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--digits-epochs", type=int, help="default: conf/base's (CPU: 1)")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument(
        "--profile",
        nargs=2,
        action="append",
        default=[],
        metavar=("SIZE", "METHOD"),
        help="also profile a few eager steps (repeatable), e.g. --profile vit_b16 ijepa",
    )
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--reference", type=Path, default=ROOT / "data/08_reporting/metrics.json")
    parser.add_argument("--commit", default=None, help="default: git rev-parse HEAD")
    args = parser.parse_args()
    if args.steps < 1 or args.flop_steps < 1 or args.warmup < 0:
        parser.error("--steps and --flop-steps must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    if args.digits_epochs is not None and args.digits_epochs < 1:
        parser.error("--digits-epochs must be >= 1")
    return args


def main() -> int:
    args = parse_arguments()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cpu" and args.digits_epochs is None:
        args.digits_epochs = 1
    budget = Budget(args.budget_s)
    bf16 = trains_in_bf16("auto", device)
    register_cpu_attention_flops()
    report = Report(
        args.out,
        {
            "date": time.strftime("%Y-%m-%d"),
            "commit": args.commit or git_commit(),
            "command": " ".join(["python benchmarks/gpu_check.py", *sys.argv[1:]]),
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "bf16": bf16,
            "reference": reference_scores(args.reference),
        },
    )
    size = 8192 if device.type == "cuda" else 512
    best, trials = matmul_peak(device, torch.bfloat16, size)
    report.record["matmul"] = {"size": size, "best": best, "trials": trials}
    report.save()
    print(f"bf16 matmul {size}^3: {best / 1e12:,.2f} TFLOP/s", flush=True)

    items = step_items(args, device)

    def run_steps(group: list, needed_s: float) -> None:
        for size_name, method, batches, compiled in group:
            label = f"{size_name} {method} {'compiled' if compiled else 'eager'}"
            if not budget.allows(needed_s):
                report.record["skipped"].append(f"{label} (time budget)")
                report.save()
                continue
            row = time_step(size_name, method, batches, compiled, args, device, bf16)
            report.record["steps"].append(row)
            report.save()
            print(f"{label}: {row.get('images_per_s', 0):,.0f} images/s", flush=True)

    run_steps(items["eager"], needed_s=20)
    for size_name, method in args.profile:
        timed = [
            row["batch_size"]
            for row in report.record["steps"]
            if (row["size"], row["method"]) == (size_name, method) and "batch_size" in row
        ]
        if timed and budget.allows(30):
            profile_step(size_name, method, timed[0], device, bf16, args.out)
    if not args.no_digits:
        params = load_parameters()
        data = digits_dataset(params)
        for method in args.methods:
            if not budget.allows(30):
                report.record["skipped"].append(f"digits {method} (time budget)")
                report.save()
                continue
            row = train_and_probe(method, data, params, args, device)
            report.record["digits"].append(row)
            report.save()
            print(f"digits {method}: pretraining {row['pretrain_s']:.1f} s", flush=True)
    run_steps(items["compiled"], needed_s=60)
    print(render(report.record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
