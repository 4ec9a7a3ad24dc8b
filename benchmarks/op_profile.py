"""Where a training step's CPU time goes: matrix products against everything else.

`step_speed.py --profile N` profiles N more steps of each side with torch's profiler and
sums each operator's own time (without the operators it calls) into three parts:

- matrix products: the GEMM kernels (`mm`, `addmm`, `bmm`, ..., the convolutions and
  torch's fused attention), whose FLOPs the profiler counts from their shapes;
- copies: operators that only move data (`copy_`, casts, `cat`, gathers and scatters,
  fills);
- the rest: element-wise maths, norms, softmax, reductions, the optimizer and the
  framework's own time between kernels.

With the processor's GEMM rate (`matmul_peak`: large square products in the step's
precision), `ceiling` says how fast the step could be without computing less: the
FLOPs a step must do, at the processor's peak, is a floor no kernel work removes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

PRODUCTS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::mv",
        "aten::addmv",
        "aten::dot",
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "mkldnn::_linear_pointwise",
    }
)
COPIES = frozenset(
    {
        "aten::copy_",
        "aten::_to_copy",
        "aten::clone",
        "aten::contiguous",
        "aten::cat",
        "aten::stack",
        "aten::index_select",
        "aten::index_copy_",
        "aten::index_add_",
        "aten::index_put_",
        "aten::gather",
        "aten::scatter",
        "aten::scatter_",
        "aten::scatter_add_",
        "aten::fill_",
        "aten::zero_",
        "aten::constant_pad_nd",
    }
)
PARTS = ("products", "copies", "rest")


def part_of(name: str) -> str:
    """Which of `PARTS` an operator's own time counts in."""
    if name in PRODUCTS:
        return "products"
    if name in COPIES:
        return "copies"
    return "rest"


@dataclass(frozen=True)
class StepProfile:
    """Per step: each part's seconds (operators' own time), the products' FLOPs, and
    the operators of the rest that took longest."""

    seconds: dict[str, float]
    product_flops: float
    top_rest: list[tuple[str, float]]

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def share(self, part: str) -> float:
        return self.seconds[part] / self.total_s


def summarize(events: Iterable, steps: int, top: int = 5) -> StepProfile:
    """`events`: the profiler's function events (`prof.events()`), of `steps` steps.

    An operator dispatched twice (autocast's wrapper calls the same operator again
    inside) appears as a child of itself; its FLOPs count once, at the outer call."""
    seconds = dict.fromkeys(PARTS, 0.0)
    rest: dict[str, float] = {}
    flops = 0.0
    for event in events:
        own_s = event.self_cpu_time_total / 1e6
        part = part_of(event.name)
        seconds[part] += own_s / steps
        if part == "rest":
            rest[event.name] = rest.get(event.name, 0.0) + own_s / steps
        parent = event.cpu_parent
        if event.flops and (parent is None or parent.name != event.name):
            flops += event.flops / steps
    ranked = sorted(rest.items(), key=lambda item: item[1], reverse=True)[:top]
    return StepProfile(seconds, flops, ranked)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device, dtype: torch.dtype, n: int, trials: int = 5
) -> tuple[float, list[float]]:
    """Best FLOP/s of `trials` timings of n x n matmuls in `dtype` (each timing runs as
    many matmuls as fit in about 0.2 s, at least one)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    flops = 2 * n**3
    for _ in range(2):  # warm-up: kernel selection, thread pools
        torch.mm(a, b)
    synchronize(device)
    start = time.perf_counter()
    torch.mm(a, b)
    synchronize(device)
    one = time.perf_counter() - start
    repeats = max(1, min(200, int(0.2 / max(one, 1e-6))))
    rates = []
    for _ in range(trials):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        synchronize(device)
        rates.append(flops * repeats / (time.perf_counter() - start))
    return max(rates), rates


def ceiling(
    baseline_images_per_s: float,
    batch_size: int,
    products_s: float,
    product_flops: float,
    peak_flops_per_s: float,
) -> dict[str, float]:
    """The most a step of `batch_size` images doing these products could gain over the
    baseline's images/s: `products_only` if everything but the products took no time,
    `at_peak` if the products also ran at the processor's GEMM peak (the FLOPs are the
    method's)."""
    floor_s = product_flops / peak_flops_per_s
    return {
        "products_only_s": products_s,
        "products_only_speedup": batch_size / products_s / baseline_images_per_s,
        "at_peak_s": floor_s,
        "at_peak_speedup": batch_size / floor_s / baseline_images_per_s,
    }
