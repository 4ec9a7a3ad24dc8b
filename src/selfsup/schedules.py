"""Per-step schedules for learning rate, weight decay and EMA momentum."""

from __future__ import annotations

import math


def linear_schedule(start: float, end: float, step: int, total_steps: int) -> float:
    """`start` at step 0, `end` at the last step (total_steps - 1)."""
    if total_steps <= 1:
        return end
    return start + (end - start) * step / (total_steps - 1)


def cosine_schedule(start: float, end: float, step: int, total_steps: int) -> float:
    """Half-cosine from `start` at step 0 to `end` at the last step."""
    if total_steps <= 1:
        return end
    progress = step / (total_steps - 1)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    start: float, peak: float, end: float, warmup_steps: int, step: int, total_steps: int
) -> float:
    """Linear warmup `start` -> `peak` over `warmup_steps`, then cosine `peak` -> `end`."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    return cosine_schedule(peak, end, step - warmup_steps, total_steps - warmup_steps)
