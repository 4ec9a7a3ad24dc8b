"""Which precision a training run computes in.

`training.precision: auto` trains with bf16 autocast where the hardware multiplies bf16
matrices natively: CUDA GPUs, and CPUs with AMX or AVX512-BF16 instructions. Elsewhere
bf16 would be emulated and slower, so those train in float32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

# /proc/cpuinfo flags of the x86 instructions that multiply bf16 natively.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU reports AMX-BF16 or AVX512-BF16 (Linux); False where that
    cannot be read (other systems train in float32 unless asked for bf16)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not NATIVE_BF16_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    return False


def trains_in_bf16(precision: str, device: torch.device) -> bool:
    """Whether `training.precision` means bf16 autocast on `device`."""
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if precision != "auto":
        raise ValueError(f"training.precision={precision!r}: use 'auto', 'fp32' or 'bf16'")
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
