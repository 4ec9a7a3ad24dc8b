"""AdamW's step on each method's parameters: torch's default implementation against the
fused one training uses (`selfsup.training.build_optimizer`), side by side.

For each method of --methods at the default size (conf/base, 1 channel), the method is
built as the pipeline builds it; both optimizers get the same parameter groups and the
same random gradients, and their steps alternate (--rounds rounds of --steps timed steps
each, after 3 untimed ones). Prints the processor, the median step time of each, their
ratio, and the largest difference between the parameters the two reach (fused AdamW
computes the same update in another order: it differs by float rounding).

Usage (repository root, project environment):
    python benchmarks/optimizer_step.py [--methods ijepa mae simclr lejepa] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from machine import cpu_model
from pretrain_throughput import configuration, random_batch

from selfsup.methods import build_method
from selfsup.training import build_optimizer, parameter_groups


def timed_step(optimizer: torch.optim.Optimizer, params: list, grads: list) -> float:
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad.clone()
    start = time.perf_counter()
    optimizer.step()
    return time.perf_counter() - start


def compare(name: str, steps: int, rounds: int) -> dict:
    config = configuration("default", [name])
    training = config["training"][name]
    torch.manual_seed(0)
    _, normalization = random_batch(2, 1, config["masking"].image_size, torch.device("cpu"))
    method = build_method(
        name,
        config["hyperparameters"][name],
        config["encoder"],
        config["masking"],
        in_chans=1,
        normalization=normalization,
    )
    default_copy, fused_copy = method, copy.deepcopy(method)
    optimizers = {
        "default": torch.optim.AdamW(
            parameter_groups(default_copy), lr=training.lr, betas=training.betas
        ),
        "fused": build_optimizer(fused_copy, training),
    }
    params = {
        "default": [p for p in default_copy.parameters() if p.requires_grad],
        "fused": [p for p in fused_copy.parameters() if p.requires_grad],
    }
    generator = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {"default": [], "fused": []}
    for round_index in range(rounds):
        for _ in range(steps + (3 if round_index == 0 else 0)):
            grads = [torch.randn(p.shape, generator=generator) for p in params["default"]]
            for kind in ("default", "fused"):
                elapsed = timed_step(optimizers[kind], params[kind], grads)
                times[kind].append(elapsed)
    difference = max(
        (a - b).abs().max().item() for a, b in zip(params["default"], params["fused"], strict=True)
    )
    default_ms = 1e3 * statistics.median(times["default"][3:])
    fused_ms = 1e3 * statistics.median(times["fused"][3:])
    return {
        "method": name,
        "tensors": len(params["default"]),
        "parameters": sum(p.numel() for p in params["default"]),
        "default_ms": default_ms,
        "fused_ms": fused_ms,
        "speed_up": default_ms / fused_ms,
        "max_difference": difference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["ijepa", "mae", "simclr", "lejepa"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"processor: {cpu_model()}, torch threads {torch.get_num_threads()}")
    print(f"torch {torch.__version__}; {args.rounds} rounds x {args.steps} steps, alternating")
    print("| method | tensors | parameters | default ms | fused ms | speed-up | max difference |")
    print("|---|---|---|---|---|---|---|")
    for name in args.methods:
        row = compare(name, args.steps, args.rounds)
        print(
            f"| {row['method']} | {row['tensors']} | {row['parameters']:,} | "
            f"{row['default_ms']:.2f} | {row['fused_ms']:.2f} | {row['speed_up']:.2f}x | "
            f"{row['max_difference']:.1e} |"
        )


if __name__ == "__main__":
    main()
