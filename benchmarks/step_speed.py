"""Training-step speed of this checkout against an earlier commit, side by side.

Times the real pretraining step (after what the tree's training sets up first, the
allocator's thresholds where it has them; the method's input sampler: masks or views; forward
under the precision `training.precision: auto` picks on this device; backward; AdamW;
the EMA or other after-step update) on a fixed batch of random images, for the
current code and for a baseline commit, in alternating subprocesses (rounds), so both
see the same machine at nearly the same time. Each side reads its own `conf/base`
(its own defaults); a config only sets sizes on top of them:

- R1: 32 px, 1 channel, patch 4, ViT 192 wide x 6 deep x 3 heads, I-JEPA predictor 96 wide
  x 3 deep x 3 heads, 4 target blocks, batch 128 (the size of the official I-JEPA
  comparison in the project's performance notes);
- default: conf/base as it is (32 px digits, 1 channel), batch from conf/base;
- vit_b16: conf/vit_b16 on top of conf/base, 3 channels, batch --vit-batch (GPU).

Prints the processor (and GPU), torch, each side's images/s (median step time over all
rounds' timed steps) and the ratio current / baseline, as a Markdown table.

Usage (repository root, the project's environment; needs git for --baseline):
    python benchmarks/step_speed.py [--baseline d0bb222] [--configs R1 default]
        [--methods ijepa mae simclr] [--rounds 3] [--warmup 3] [--steps 8]
        [--device auto|cpu|cuda] [--compile] [--fp32] [--ijepa-variants batch_min ...]
        [--profile N] [--json PATH]
    python benchmarks/step_speed.py --baseline-tree DIR ...   # a tree made before
        (e.g. `git archive d0bb222 src conf | tar -x -C DIR`, where git is missing)
MAE and SimCLR are timed at the default config only (their step has no I-JEPA sizes).
--ijepa-variants also times I-JEPA's context options on the current code (one row each,
against the same baseline).
--profile N (CPU) profiles N more steps per round after the timed ones and prints where
each side's step time goes: matrix products, copies and the rest (op_profile.py), the
products' FLOPs and rate against this processor's GEMM rate, and how fast the current
step could be with the same products.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is on sys.path.
import op_profile
from machine import cpu_model
from params import merge
from revisions import export_tree

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("R1", "default", "vit_b16")
# I-JEPA options timed beside the current defaults (--ijepa-variants), current side only.
VARIANTS = {
    "batch_min": {"masking": {"multiblock": {"context_length": "batch_min"}}},
    "shared": {"ijepa": {"hyperparameters": {"predictor": {"context": "shared"}}}},
    "batch_min+shared": {
        "masking": {"multiblock": {"context_length": "batch_min"}},
        "ijepa": {"hyperparameters": {"predictor": {"context": "shared"}}},
    },
    "per_image+per_block": {
        "masking": {"multiblock": {"context_length": "per_image"}},
        "ijepa": {"hyperparameters": {"predictor": {"context": "per_block"}}},
    },
}
R1 = {
    "masking": {"image_size": 32, "patch_size": 4, "multiblock": {"num_targets": 4}},
    "encoder": {"embed_dim": 192, "depth": 6, "num_heads": 3},
    "ijepa": {"hyperparameters": {"predictor": {"embed_dim": 96, "depth": 3, "num_heads": 3}}},
}


# --- the worker: one side, one config, one method, in its own process ------------------


def tree_parameters(tree: Path, config: str) -> tuple[dict, int]:
    """The tree's conf/base pretraining and masking parameters with `config`'s sizes,
    and the image channels."""
    import yaml

    params: dict = {}
    for name in ("parameters_pretraining.yml", "parameters_masking.yml"):
        params.update(yaml.safe_load((tree / "conf" / "base" / name).read_text()))
    if config == "R1":
        return merge(params, R1), 1
    if config == "vit_b16":
        overrides = yaml.safe_load((tree / "conf" / "vit_b16" / "parameters.yml").read_text())
        return merge(params, overrides), 3
    return params, 1


def autocast_bf16(device) -> bool:
    """The tree's own `precision: auto`: current code decides per device; the older
    code used bf16 on CUDA only."""
    try:
        from selfsup.precision import trains_in_bf16
    except ImportError:
        return device.type == "cuda"
    return trains_in_bf16("auto", device)


def run_worker(args) -> None:
    """Times each variant (the tree's defaults: `default`) in this process, in turn."""
    import torch

    import selfsup

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    params, channels = tree_parameters(Path(args.tree), args.config)
    for variant in args.variant or ["default"]:
        overrides = VARIANTS.get(variant, {})
        record = time_steps(merge(params, overrides), channels, args, device)
        record.update(variant=variant, selfsup=str(Path(selfsup.__file__).parent))
        print("RESULT " + json.dumps(record), flush=True)


def time_steps(params: dict, channels: int, args, device) -> dict:
    import numpy as np
    import torch

    from selfsup.config import EncoderConfig, MaskingConfig
    from selfsup.methods import build_method
    from selfsup.randomness import SampleDraws
    from selfsup.training import parameter_groups

    batch_size = args.batch_size or (
        128 if args.config == "R1" else params[args.method]["training"]["batch_size"]
    )
    if args.config == "vit_b16":
        batch_size = args.vit_batch
    masking = MaskingConfig(**params["masking"])
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    size = masking.image_size
    images = torch.randn(batch_size, channels, size, size, generator=generator).to(device)
    normalization = {"mean": [0.5] * channels, "std": [0.25] * channels}
    method = build_method(
        args.method,
        params[args.method]["hyperparameters"],
        EncoderConfig(**params["encoder"]),
        masking,
        in_chans=channels,
        normalization=normalization,
    ).to(device)
    method.train()
    training = params[args.method]["training"]
    try:  # the optimizer this tree's training builds
        from selfsup.training import TrainingConfig, build_optimizer

        optimizer = build_optimizer(method, TrainingConfig(**training))
    except ImportError:  # trees from before build_optimizer: AdamW's default implementation
        optimizer = torch.optim.AdamW(
            parameter_groups(method), lr=training["lr"], betas=tuple(training["betas"])
        )
    try:  # what this tree's training does to the allocator before its first step
        from selfsup.allocator import keep_freed_memory

        keep_freed_memory()
    except ImportError:  # trees from before it: glibc's malloc as it comes
        pass
    model = torch.compile(method) if args.compile else method
    bf16 = autocast_bf16(device) and not args.fp32
    sampler = method.input_sampler()
    total = args.warmup + args.steps
    schedule_length = total + args.profile  # the profiled steps come after the timed ones
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> None:
        draws = SampleDraws(0, 0, i, np.arange(i * batch_size, (i + 1) * batch_size))
        inputs = {k: v.to(device, non_blocking=True) for k, v in sampler(images, draws).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(i, schedule_length)
        loss.item()

    warmup_start = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    warmup_s = time.perf_counter() - warmup_start
    times = []
    for i in range(args.warmup, total):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    record = {
        "batch_size": batch_size,
        "bf16": bf16,
        "step_times_s": times,
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    if device.type == "cuda":
        record["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    if args.profile and device.type == "cpu":
        record["profile"] = profile_steps(step, total, args.profile, bf16)
    return record


def profile_steps(step, first: int, count: int, bf16: bool) -> dict:
    """`count` more steps under torch's profiler: each part's seconds per step
    (op_profile), the time outside any operator, the products' FLOPs, and this
    processor's GEMM rate in the step's precision."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.perf_counter()
        for i in range(first, first + count):
            step(i)
        wall_s = (time.perf_counter() - start) / count
    summary = op_profile.summarize(prof.events(), count)
    dtype = torch.bfloat16 if bf16 else torch.float32
    return {
        "seconds": summary.seconds,
        "outside_operators_s": max(wall_s - summary.total_s, 0.0),
        "profiled_step_s": wall_s,
        "product_flops": summary.product_flops,
        "top_rest": summary.top_rest,
        "gemm_peak_flops_per_s": op_profile.matmul_peak(torch.device("cpu"), dtype, 2048)[0],
        "gemm_dtype": str(dtype).removeprefix("torch."),
    }


# --- the driver ---------------------------------------------------------------------


def time_side(tree: Path, config: str, method: str, variants: list[str], args) -> list[dict]:
    """One process timing `variants` of `method` at `config` on `tree`'s code."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--tree",
        str(tree),
        "--config",
        config,
        "--method",
        method,
        "--device",
        args.device,
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--vit-batch",
        str(args.vit_batch),
        "--variant",
        *variants,
    ]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.compile:
        command.append("--compile")
    if args.fp32:
        command.append("--fp32")
    if args.profile:
        command += ["--profile", str(args.profile)]
    paths = [str(tree / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    records = [
        json.loads(line[len("RESULT ") :])
        for line in done.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if done.returncode != 0 or len(records) != len(variants):
        raise RuntimeError(f"{config}/{method} in {tree} failed:\n{done.stdout}\n{done.stderr}")
    return [check_imported(record, tree) for record in records]


def check_imported(record: dict, tree: Path) -> dict:
    """The worker must have timed the tree it was given, not an installed copy."""
    if Path(record["selfsup"]).resolve() != (tree / "src" / "selfsup").resolve():
        raise RuntimeError(f"timed selfsup from {record['selfsup']}, not from {tree}")
    return record


def summary(records: list[dict]) -> dict:
    times = [t for record in records for t in record["step_times_s"]]
    median = statistics.median(times)
    first = records[0]
    return {
        "images_per_s": first["batch_size"] / median,
        "median_step_s": median,
        "batch_size": first["batch_size"],
        "bf16": first["bf16"],
        "rounds": records,
    }


def mean_profile(records: list[dict]) -> dict:
    """The rounds' profiles (`profile_steps`) averaged, field by field."""
    profiles = [record["profile"] for record in records]
    parts = {
        part: statistics.fmean(p["seconds"][part] for p in profiles) for part in op_profile.PARTS
    }
    fields = ("outside_operators_s", "profiled_step_s", "product_flops", "gemm_peak_flops_per_s")
    mean = {field: statistics.fmean(p[field] for p in profiles) for field in fields}
    rest: dict[str, float] = {}
    for p in profiles:
        for name, seconds in p["top_rest"]:
            rest[name] = rest.get(name, 0.0) + seconds / len(profiles)
    top_rest = sorted(rest.items(), key=lambda item: item[1], reverse=True)
    return {"seconds": parts, **mean, "gemm_dtype": profiles[0]["gemm_dtype"], "top_rest": top_rest}


def print_profiles(results: list[dict], steps: int) -> None:
    """Each side's step time by part, and how fast the current step could be with the
    same products (op_profile.ceiling)."""
    print(f"\n### Where the step's time goes (torch profiler, {steps} steps per round)\n")
    print(
        "| config | method | current code | side | step ms | profiled step ms | products ms "
        "| copies ms "
        "| rest ms | outside operators ms | products GFLOP | products GFLOP/s "
        "| GEMM peak GFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bounds = []
    for row in results:
        variant = "defaults" if row["variant"] == "default" else row["variant"]
        sides = {}
        for side in ("baseline", "current"):
            profile = sides[side] = mean_profile(row[side]["rounds"])
            seconds = profile["seconds"]
            print(
                f"| {row['config']} | {row['method']} | {variant} | {side} "
                f"| {row[side]['median_step_s'] * 1e3:.1f} "
                f"| {profile['profiled_step_s'] * 1e3:.1f} "
                + " ".join(f"| {seconds[part] * 1e3:.1f}" for part in op_profile.PARTS)
                + f" | {profile['outside_operators_s'] * 1e3:.1f} "
                f"| {profile['product_flops'] / 1e9:.1f} "
                f"| {profile['product_flops'] / seconds['products'] / 1e9:.0f} "
                f"| {profile['gemm_peak_flops_per_s'] / 1e9:.0f} ({profile['gemm_dtype']}) |"
            )
        current = sides["current"]
        largest = ", ".join(
            f"{name} {seconds * 1e3:.1f}" for name, seconds in current["top_rest"][:5]
        )
        bounds.append(
            f"- {row['config']} {row['method']} {variant}, the rest's largest (ms): {largest}"
        )
        bound = op_profile.ceiling(
            row["baseline"]["images_per_s"],
            row["current"]["batch_size"],
            current["seconds"]["products"],
            current["product_flops"],
            current["gemm_peak_flops_per_s"],
        )
        bounds.append(
            f"- {row['config']} {row['method']} {variant}: the current step's products alone "
            f"take {bound['products_only_s'] * 1e3:.1f} ms "
            f"({bound['products_only_speedup']:.2f}x the baseline's images/s), "
            f"{bound['at_peak_s'] * 1e3:.1f} ms at the GEMM peak "
            f"({bound['at_peak_speedup']:.2f}x)"
        )
    print(
        "\nThe current step's largest operators outside the products and copies, and the "
        "most it could gain with the same products if nothing else took time:"
    )
    print("\n".join(bounds))


def on_cuda(device: str) -> bool:
    """Whether the workers will train on CUDA (`--device auto` picks it when present)."""
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="d0bb222", help="git revision to compare with")
    parser.add_argument("--baseline-tree", type=Path, help="a tree with the baseline's src/ conf/")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=["R1", "default"])
    parser.add_argument("--methods", nargs="+", default=["ijepa", "mae", "simclr"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, help="override every config's batch")
    parser.add_argument("--vit-batch", type=int, default=128, help="batch of vit_b16")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument(
        "--fp32", action="store_true", help="both sides in float32 (a CPU without native bf16)"
    )
    parser.add_argument(
        "--ijepa-variants",
        nargs="*",
        default=[],
        choices=sorted(VARIANTS),
        help="I-JEPA options also timed on the current code",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N steps per round (CPU): where each side's step time goes",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--variant", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return 0
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1, --warmup >= 0")
    if args.profile < 0:
        parser.error("--profile must be >= 0")
    if args.profile and on_cuda(args.device):
        parser.error("--profile profiles the CPU step only; add --device cpu, or drop --profile")

    with tempfile.TemporaryDirectory(prefix="step_speed_") as scratch:
        if args.baseline_tree:
            baseline, label = args.baseline_tree.resolve(), str(args.baseline_tree)
        else:
            baseline = export_tree(args.baseline, Path(scratch), ("src", "conf"))
            label = args.baseline
        results = []
        for config in args.configs:
            methods = args.methods if config == "default" else ["ijepa"]
            for method in methods:
                variants = ["default"]
                if method == "ijepa":
                    variants += [v for v in args.ijepa_variants if v not in variants]
                runs: dict[str, list[dict]] = {name: [] for name in ["baseline", *variants]}
                for _ in range(args.rounds):
                    runs["baseline"] += time_side(baseline, config, method, ["default"], args)
                    for record in time_side(ROOT, config, method, variants, args):
                        runs[record["variant"]].append(record)
                reference = summary(runs.pop("baseline"))
                for variant, records in runs.items():
                    row = {"config": config, "method": method, "variant": variant}
                    row.update(baseline=reference, current=summary(records))
                    row["speedup"] = row["current"]["images_per_s"] / reference["images_per_s"]
                    results.append(row)
                    print(
                        f"{config} {method} {variant}: baseline "
                        f"{reference['images_per_s']:,.1f} images/s, current "
                        f"{row['current']['images_per_s']:,.1f}, {row['speedup']:.2f}x",
                        flush=True,
                    )

    first = results[0]["current"]["rounds"][0]
    gpu = first["gpu"] or "none"
    command = " ".join(["python benchmarks/step_speed.py", *sys.argv[1:]])
    print(f"\n## Training step: this checkout against {label}")
    print(f"- date: {time.strftime('%Y-%m-%d')}; command: {command}")
    print(
        f"- machine: {cpu_model()}, {os.cpu_count()} cores (torch threads {first['threads']}), "
        f"GPU {gpu}; Python {platform.python_version()}, torch {first['torch']}, "
        f"device {first['device']}"
    )
    print(
        f"- {args.rounds} rounds, baseline and current alternating, each a fresh process: "
        f"{args.warmup} warm-up + {args.steps} timed steps; images/s = batch / median "
        "step time over all rounds"
        + ("; torch.compile" if args.compile else "")
        + ("; float32 forced" if args.fp32 else "")
    )
    print()
    print(
        "| config | method | current code | batch | baseline images/s (bf16) "
        "| current images/s (bf16) | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in results:
        base, cur = row["baseline"], row["current"]
        variant = "defaults" if row["variant"] == "default" else row["variant"]
        print(
            f"| {row['config']} | {row['method']} | {variant} | {cur['batch_size']} "
            f"| {base['images_per_s']:,.1f} ({'yes' if base['bf16'] else 'no'}) "
            f"| {cur['images_per_s']:,.1f} ({'yes' if cur['bf16'] else 'no'}) "
            f"| **{row['speedup']:.2f}x** |"
        )
    peaks = [row for row in results if "peak_memory_bytes" in row["current"]["rounds"][0]]
    for row in peaks:
        base_peak = row["baseline"]["rounds"][0]["peak_memory_bytes"] / 2**20
        cur_peak = row["current"]["rounds"][0]["peak_memory_bytes"] / 2**20
        print(
            f"- peak GPU memory, {row['config']} {row['method']} {row['variant']}: "
            f"baseline {base_peak:,.0f} MiB, current {cur_peak:,.0f} MiB"
        )
    if args.profile:
        print_profiles(results, args.profile)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "command": command,
            "machine": cpu_model(),
            "cores": os.cpu_count(),
            "gpu": gpu,
            "baseline": label,
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
