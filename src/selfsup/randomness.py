"""Random draws keyed by (seed, epoch, step, sample index), not by the order of calls.

A mask or an augmentation of one image is drawn from a generator seeded by the run's
seed, the epoch and the image's row in the dataset; what a whole batch shares (I-JEPA's
target block shape) from one seeded by the global step. So the draws do not depend on
how a global batch is cut into micro-batches, data-parallel ranks or loader workers,
and a resumed run needs no saved random state to continue exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# Keys are always four integers long: numpy's SeedSequence treats trailing zeros as
# absent, so keys of different lengths could collide.
_PER_BATCH = 0
_PER_SAMPLE = 1


def _stream_id(stream: str) -> int:
    """A stable integer per purpose (`masks`, `crops`, `views`), so two purposes never
    share a generator and adding one never shifts another's draws."""
    return zlib.crc32(stream.encode())


@dataclass(frozen=True)
class SampleDraws:
    """Where every random choice for one batch (or micro-batch) comes from.

    seed: the run's seed; epoch: the epoch; step: the global optimizer step;
    indices: the dataset rows of the batch, in batch order; batch_indices: the rows of
    the step's whole global batch (every micro-batch and process) when this is a part
    of it, for draws that depend on the whole batch (I-JEPA's `batch_min` contexts).
    """

    seed: int
    epoch: int
    step: int
    indices: np.ndarray
    batch_indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")

    def __len__(self) -> int:
        return len(self.indices)

    def for_batch(self, stream: str) -> np.random.Generator:
        """Shared by every sample of the step's global batch."""
        return np.random.default_rng([self.seed, _stream_id(stream), _PER_BATCH, self.step])

    def per_sample(self, stream: str) -> list[np.random.Generator]:
        """One generator per row of the batch, a function of (seed, epoch, row)."""
        return self.for_rows(stream, self.indices)

    def for_rows(self, stream: str, rows: np.ndarray) -> list[np.random.Generator]:
        """The generators `per_sample` gives these rows (of this epoch)."""
        stream_id = _stream_id(stream)
        return [
            np.random.default_rng([self.seed, stream_id, _PER_SAMPLE, self.epoch, int(row)])
            for row in rows
        ]

    def rest_of_batch(self) -> np.ndarray:
        """Rows of the global batch outside this (micro-)batch; none when it is whole."""
        if self.batch_indices is None:
            return np.empty(0, dtype=np.int64)
        return np.setdiff1d(self.batch_indices, self.indices)

    @classmethod
    def first_batch(cls, batch_size: int, seed: int = 0) -> SampleDraws:
        """Rows 0..batch_size-1 at epoch 0, step 0 (tests, benchmarks)."""
        return cls(seed, 0, 0, np.arange(batch_size))
