"""Learning-rate, weight-decay and EMA-momentum schedules."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.schedules import cosine_schedule, linear_schedule, warmup_cosine_schedule
from tests.helpers import make_ijepa


@pytest.mark.parametrize("total", [2, 7, 100])
def test_linear_schedule_endpoints_and_midpoint(total):
    assert linear_schedule(0.996, 1.0, 0, total) == pytest.approx(0.996)
    assert linear_schedule(0.996, 1.0, total - 1, total) == pytest.approx(1.0)
    values = [linear_schedule(2.0, -1.0, step, total) for step in range(total)]
    steps = [values[i + 1] - values[i] for i in range(total - 1)]
    assert steps == pytest.approx([-3.0 / (total - 1)] * (total - 1))


def test_linear_schedule_with_one_step_is_the_end_value():
    assert linear_schedule(0.996, 1.0, 0, 1) == 1.0


@pytest.mark.parametrize("total", [2, 9, 50])
def test_cosine_schedule_endpoints_midpoint_and_monotone(total):
    assert cosine_schedule(0.04, 0.4, 0, total) == pytest.approx(0.04)
    assert cosine_schedule(0.04, 0.4, total - 1, total) == pytest.approx(0.4)
    up = [cosine_schedule(0.04, 0.4, s, total) for s in range(total)]
    down = [cosine_schedule(1.0, 0.1, s, total) for s in range(total)]
    assert all(b >= a for a, b in zip(up, up[1:], strict=False))
    assert all(b <= a for a, b in zip(down, down[1:], strict=False))
    # Half-cosine: cos(pi * p), written out independently.
    for step in range(total):
        p = step / (total - 1)
        assert down[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def test_cosine_schedule_is_half_way_at_the_middle_step():
    assert cosine_schedule(1.0, 0.0, 5, 11) == pytest.approx(0.5)


@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (1, 10), (4, 20), (10, 30)])
def test_warmup_cosine_schedule(warmup, total):
    start, peak, end = 1e-4, 1e-3, 1e-6

    def lr(step):
        return warmup_cosine_schedule(start, peak, end, warmup, step, total)

    assert lr(0) == pytest.approx(start if warmup else peak)
    assert lr(warmup) == pytest.approx(peak)
    assert lr(total - 1) == pytest.approx(end)
    values = [lr(step) for step in range(total)]
    # Linear rise during warmup, then non-increasing.
    for step in range(warmup):
        assert values[step] == pytest.approx(start + (peak - start) * step / warmup)
    assert all(b <= a for a, b in zip(values[warmup:], values[warmup + 1 :], strict=False))
    assert max(values) == pytest.approx(peak)
    assert min(values) == pytest.approx(end)


@pytest.mark.parametrize("total", [3, 40])
def test_ijepa_ema_momentum_runs_from_0996_to_1(total):
    method = make_ijepa()
    momenta = [method.after_optimizer_step(step, total)["momentum"] for step in range(total)]
    assert momenta[0] == pytest.approx(0.996)
    assert momenta[-1] == 1.0
    assert all(b > a for a, b in zip(momenta, momenta[1:], strict=False))


def test_ema_momentum_of_1_leaves_target_encoder_unchanged():
    method = make_ijepa()
    with torch.no_grad():
        for param in method.context_encoder.parameters():
            param.add_(1.0)
    before = [p.clone() for p in method.target_encoder.parameters()]
    assert method.after_optimizer_step(9, 10)["momentum"] == 1.0
    for old, new in zip(before, method.target_encoder.parameters(), strict=True):
        assert torch.equal(old, new)
