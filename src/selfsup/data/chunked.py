"""Image arrays larger than memory: read, transform and write them a chunk of rows at a time.

Ingestion stages decoded images in a memory-mapped scratch file, the image datasets
are memory-mapped `.npy` files, and the steps between them (resizing, concatenating
two sources) are lazy `ChunkedImages` that `write_npy` streams to disk. At no point
is more than one chunk of rows copied into process memory. Imports only numpy: the
decoding workers load this module.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import numpy as np

# 32x32x3 uint8 rows: 4096 rows are 12 MiB; large rows are capped by CHUNK_BYTES.
CHUNK_ROWS = 4096
CHUNK_BYTES = 64 * 2**20


def rows_per_chunk(row_shape: tuple[int, ...], itemsize: int = 1) -> int:
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // row_bytes))


@runtime_checkable
class ChunkedImages(Protocol):
    """Something with a shape and dtype that yields its rows in order, in chunks."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def chunks(self) -> Iterator[np.ndarray]: ...


def iter_chunks(data: np.ndarray | ChunkedImages) -> Iterator[np.ndarray]:
    """Rows of an array (in memory or memory-mapped) or of a `ChunkedImages`, in order."""
    if isinstance(data, ChunkedImages) and not isinstance(data, np.ndarray):
        yield from data.chunks()
        return
    step = rows_per_chunk(data.shape[1:], data.dtype.itemsize)
    for start in range(0, data.shape[0], step):
        yield np.asarray(data[start : start + step])


def write_npy(path: Path, data: np.ndarray | ChunkedImages) -> None:
    """Write `data` as a `.npy` a chunk at a time through ordinary file writes.

    Plain writes go through the page cache, not this process's memory, so saving an
    array larger than RAM needs only one chunk of it in memory."""
    shape = tuple(int(n) for n in data.shape)
    dtype = np.dtype(data.dtype)
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": shape,
    }
    written = 0
    with Path(path).open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in iter_chunks(data):
            if chunk.dtype != dtype or chunk.shape[1:] != shape[1:]:
                raise ValueError(f"chunk {chunk.dtype} {chunk.shape} does not fit {dtype} {shape}")
            if chunk.size:
                # From the array's own buffer: a chunk of a memory-mapped array is not
                # copied into process memory on its way to the file.
                handle.write(np.ascontiguousarray(chunk).data.cast("B"))
            written += chunk.shape[0]
    if written != shape[0]:
        raise ValueError(f"wrote {written} rows but the array declares {shape[0]}")


class ConcatenatedImages:
    """Several image arrays with equal (H, W, C), one after the other, without copying."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        shapes = {part.shape[1:] for part in parts}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack images of shapes {sorted(shapes)}")
        self.parts = parts
        self.shape = (sum(part.shape[0] for part in parts), *parts[0].shape[1:])
        self.dtype = np.dtype(np.uint8)

    def chunks(self) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield from iter_chunks(part)


class StagingArray:
    """A uint8 array of at most `capacity` rows in an unlinked scratch file: rows are
    appended as they are decoded, and `view()` is the filled part, memory-mapped.

    The file has no name, so it disappears when the last view is dropped, even after
    a crash."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = tempfile.TemporaryFile(dir=directory, prefix="staging-")
        self._array = np.memmap(
            self._file, dtype=np.uint8, mode="w+", shape=(max(1, capacity), *row_shape)
        )
        self.capacity = capacity
        self.rows = 0

    def append(self, row: np.ndarray) -> None:
        self._array[self.rows] = row
        self.rows += 1

    def view(self) -> np.ndarray:
        self._array.flush()
        return self._array[: self.rows]
