"""What keeping freed memory in the process (`selfsup.allocator`) saves CPU training.

Trains each method of --methods with `selfsup.training.train` (the real loop: crops,
masks or views, forward, backward, AdamW, EMA; no monitors, no checkpoints) for
--epochs epochs on --images random images at the default size, each run in a fresh
process, alternately with glibc's malloc as it comes (`keep_freed_memory` replaced by
a no-op) and with the thresholds `train` sets, --repeats times each. Prints the
processor, every run's seconds, page faults (`ru_minflt`) and peak RSS, and per method
the ratio of the median times. The final losses are printed too: both must be equal,
since the allocator changes where memory comes from, not what is computed.

Usage (repository root, project environment):
    python benchmarks/allocator.py [--methods ijepa mae simclr lejepa] [--epochs 5]
        [--images 1078] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from machine import cpu_model
from pretrain_throughput import configuration

import selfsup.training
from selfsup.methods import build_method
from selfsup.training import train

MODES = ("glibc default", "kept")


def run_child(method: str, mode: str, epochs: int, images: int) -> dict:
    """One training run in this process; `mode` says whether train keeps freed memory."""
    if mode == "glibc default":
        selfsup.training.keep_freed_memory = lambda: False
    config = configuration("default", [method])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(images, config["channels"], 32, 32, generator=generator)
    normalization = {"mean": [0.5] * config["channels"], "std": [0.29] * config["channels"]}
    batch = (pixels - 0.5) / 0.29
    torch.manual_seed(0)
    model = build_method(
        method,
        config["hyperparameters"][method],
        config["encoder"],
        config["masking"],
        in_chans=config["channels"],
        normalization=normalization,
    )
    training = config["training"][method].model_copy(
        update={"epochs": epochs, "warmup_epochs": min(epochs, 2), "checkpoint_every": None}
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    history = train(model, batch, training, seed=0, description=method)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "method": method,
        "mode": mode,
        "seconds": seconds,
        "page_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_mib": after.ru_maxrss / 1024,
        "steps": len(history),
        "final_loss": float(history["loss"].iloc[-1]),
    }


def spawn(method: str, mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", method, mode]
    command += ["--epochs", str(args.epochs), "--images", str(args.images)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ijepa", "mae", "simclr", "lejepa"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=1078)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child, args.epochs, args.images)))
        return
    print(f"# {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"# {args.images} random images, {args.epochs} epochs, default size, one process per run")
    print("| method | malloc | seconds | page faults | peak RSS (MiB) | final loss |")
    print("|---|---|---|---|---|---|")
    results: dict[tuple[str, str], list[dict]] = {}
    for method in args.methods:
        for _ in range(args.repeats):
            for mode in MODES:
                row = spawn(method, mode, args)
                results.setdefault((method, mode), []).append(row)
                print(
                    f"| {method} | {mode} | {row['seconds']:.2f} | {row['page_faults']:,} | "
                    f"{row['peak_rss_mib']:.0f} | {row['final_loss']:.6f} |",
                    flush=True,
                )
    print("\n| method | median s, glibc default | median s, kept | kept / default |")
    print("|---|---|---|---|")
    for method in args.methods:
        default, kept = (
            statistics.median(r["seconds"] for r in results[(method, mode)]) for mode in MODES
        )
        print(f"| {method} | {default:.2f} | {kept:.2f} | {kept / default:.2f} |")


if __name__ == "__main__":
    main()
