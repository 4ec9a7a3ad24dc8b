"""Building blocks of the typed parameters: a strict model and range checks that name
the parameter. A leaf module: every component's parameter model builds on it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

FloatRange = tuple[float, float]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_range(
    name: str,
    value: FloatRange,
    low: float,
    high: float,
    *,
    low_open: bool = True,
    high_open: bool = False,
) -> FloatRange:
    """Check that `value` is an ordered pair inside (low, high]; raise naming `name`."""
    lo, hi = value
    left, right = ("(" if low_open else "["), (")" if high_open else "]")
    allowed = f"{left}{low}, {high}{right}"
    below = lo <= low if low_open else lo < low
    above = hi >= high if high_open else hi > high
    if below or above or lo > hi:
        raise ValueError(
            f"{name}={list(value)} is invalid: both ends must lie in {allowed} "
            f"and the first must not exceed the second"
        )
    return value


def check_width(prefix: str, embed_dim: int, num_heads: int) -> None:
    """Attention heads must split the width, and 2-D sin-cos positions need a multiple of 4."""
    if embed_dim % num_heads or embed_dim % 4:
        raise ValueError(
            f"{prefix}.embed_dim={embed_dim} must be divisible by "
            f"{prefix}.num_heads={num_heads} and by 4"
        )
