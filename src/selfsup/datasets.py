"""Two small Kedro datasets that kedro-datasets does not offer.

- `NumpyDataset`: one array in `.npy` (no pickles), optionally memory-mapped on load;
  saves arrays, memory-mapped arrays and lazy `ChunkedImages` a chunk at a time, so
  an image array larger than memory passes through it.
- `EncoderDataset`: encoder weights plus the configuration that rebuilds the encoder,
  in a `torch.save` file whose contents are plain tensors, strings and numbers, so
  it loads with `torch.load(weights_only=True)` and cannot run code.
Both write to a temporary file and rename it, so a crash never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from kedro.io import AbstractDataset, DatasetError

from selfsup.checkpoints import atomic_write
from selfsup.data.chunked import ChunkedImages, write_npy


class NumpyDataset(AbstractDataset[np.ndarray | ChunkedImages, np.ndarray]):
    def __init__(
        self, filepath: str, mmap_mode: str | None = None, metadata: dict | None = None
    ) -> None:
        self._filepath = Path(filepath)
        # Not used here; plugins such as kedro-viz read it (its layer).
        self.metadata = metadata
        self._mmap_mode = mmap_mode

    def load(self) -> np.ndarray:
        if not self._filepath.exists():
            raise DatasetError(f"{self._filepath} does not exist; run the pipeline that writes it")
        return np.load(self._filepath, mmap_mode=self._mmap_mode, allow_pickle=False)

    def save(self, data: np.ndarray | ChunkedImages) -> None:
        if not isinstance(data, (np.ndarray, ChunkedImages)):
            data = np.asarray(data)
        if isinstance(data, np.ndarray) and data.dtype.hasobject:
            raise DatasetError(f"{self._filepath}: refusing to save an object array (pickles)")
        atomic_write(self._filepath, lambda tmp: write_npy(tmp, data))

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath)), "mmap_mode": self._mmap_mode}


class EncoderDataset(AbstractDataset[dict, dict]):
    """Saves and loads `{"state_dict": {name: tensor}, "config": {...plain values}}`."""

    def __init__(self, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict:
        if not self._filepath.exists():
            raise DatasetError(
                f"{self._filepath} does not exist; run the pretraining pipeline first"
            )
        return torch.load(self._filepath, map_location="cpu", weights_only=True)

    def save(self, data: dict) -> None:
        if set(data) != {"state_dict", "config"}:
            raise DatasetError("EncoderDataset saves a dict with keys 'state_dict' and 'config'")
        state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in data["state_dict"].items()
        }
        atomic_write(
            self._filepath,
            lambda tmp: torch.save({"state_dict": state, "config": data["config"]}, tmp),
        )

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath))}
