"""Kedro datasets that kedro-datasets does not offer, each with a kedro-viz preview.

- `NumpyDataset`: one array in `.npy` (no pickles), optionally memory-mapped on load;
  saves arrays, memory-mapped arrays and lazy `ChunkedImages` a chunk at a time, so
  an image array larger than memory passes through it.
- `EncoderDataset`: encoder weights plus the configuration that rebuilds the encoder,
  in a `torch.save` file whose contents are plain tensors, strings and numbers, so
  it loads with `torch.load(weights_only=True)` and cannot run code.
- `TimmModelDataset`: the encoder as a timm model folder (`config.json` +
  `model.safetensors`), loadable with `timm.create_model("local-dir:...")`.
- `MarkdownDataset`: kedro-datasets' text file, previewed as rendered Markdown.
Each writes to a temporary file or folder and renames it, so a crash never leaves half
of one.
"""

from __future__ import annotations

import html
import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._typing import HTMLPreview, JSONPreview
from kedro_datasets.text import TextDataset
from markdown_it import MarkdownIt
from timm.models.vision_transformer import VisionTransformer

from selfsup.checkpoints import atomic_write
from selfsup.data.chunked import ChunkedImages, write_npy
from selfsup.models.timm_export import load_timm_folder, save_timm_folder, timm_folder_config


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

    def preview(self, rows: int = 5, values: int = 8) -> HTMLPreview:
        """Shape, dtype and the first `values` numbers of the first `rows` rows (each
        row flattened), read from the memory-mapped file."""
        array = np.load(self._filepath, mmap_mode="r", allow_pickle=False)
        head = np.asarray(array[:rows]).reshape(min(rows, len(array)), -1)
        table = pd.DataFrame(
            head[:, :values], columns=[str(i) for i in range(head.shape[1])][:values]
        )
        if head.shape[1] > values:
            table["…"] = "…"
        caption = f"shape {array.shape}, dtype {array.dtype}"
        return HTMLPreview(f"<p>{html.escape(caption)}</p>" + table.to_html(float_format="%.4g"))


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

    def preview(self) -> JSONPreview:
        """The configuration that rebuilds the encoder and its parameter count."""
        checkpoint = self.load()
        parameters = sum(tensor.numel() for tensor in checkpoint["state_dict"].values())
        return JSONPreview(json.dumps({**checkpoint["config"], "parameters": parameters}))


class TimmModelDataset(AbstractDataset[VisionTransformer, VisionTransformer]):
    """A headless timm ViT in timm's local folder format (`selfsup.models.timm_export`)."""

    def __init__(self, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> VisionTransformer:
        if not (self._filepath / "config.json").is_file():
            raise DatasetError(
                f"{self._filepath} holds no exported model; run the pretraining pipeline first"
            )
        return load_timm_folder(self._filepath)

    def save(self, data: VisionTransformer) -> None:
        save_timm_folder(data, self._filepath)

    def _exists(self) -> bool:
        return (self._filepath / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath))}

    def preview(self) -> JSONPreview:
        """timm's `config.json`: the architecture, its arguments and the data config."""
        return JSONPreview(json.dumps(timm_folder_config(self._filepath)))


class MarkdownDataset(TextDataset):
    """A Markdown text file that kedro-viz shows rendered (tables included)."""

    def preview(self) -> HTMLPreview:
        return HTMLPreview(MarkdownIt("commonmark").enable("table").render(self.load()))
