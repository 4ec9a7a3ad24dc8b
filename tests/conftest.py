"""Suite-wide settings: one thread per math library, no telemetry.

The suite runs on a small, busy machine. OpenBLAS/OpenMP threads that spin while
another process holds the cores make scikit-learn fits ~100x slower there, so every
library is limited to one thread (subprocesses inherit the environment variables).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

torch.set_num_threads(1)
_THREAD_LIMITS = threadpool_limits(limits=1)


@pytest.fixture
def images() -> torch.Tensor:
    """48 random normalized 1-channel 16x16 images."""
    return torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(123))
