"""Features of a folder of new images from a pretrained encoder (`selfsup embed`).

Files are found and decoded as the `image_folder` source does (same formats, conversion
and reasons for rejecting a file), at the encoder's input size, channel count and
normalization, which its checkpoint carries. Decoding and encoding go a batch at a
time: a worker pool decodes the next batch while the encoder runs on this one, and
features are written straight into a memory-mapped `.npy`, so memory stays bounded
whatever the folder's size.

Output: `<out>.npy` (float32, one row per embedded image), `<out>.csv` (the path of
each row's image, in row order) and `<out>.rejected.csv` (each unusable file and why).
`.npy` and CSV rather than Parquet: no new dependency, the array memory-maps like the
pipeline's own features.npy, and numpy and pandas read both.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from selfsup.checkpoints import atomic_write
from selfsup.data.decode import DecodeSettings, decode_file
from selfsup.data.image_folder import as_text, scan_folder
from selfsup.data.preprocessing import to_model_input
from selfsup.evaluation import check_pooling, encoder_features
from selfsup.models.vit import encoder_from_checkpoint
from selfsup.training import resolve_device

ENCODER_FILE = "encoder.pt"


class EmbedInputError(ValueError):
    """An argument of `selfsup embed` that cannot work; raised before any decoding."""


@dataclass(frozen=True)
class EmbedOutputs:
    features: Path
    paths: Path
    rejected: Path

    @classmethod
    def beside(cls, out: Path) -> EmbedOutputs:
        if out.suffix != ".npy":
            raise EmbedInputError(
                f"--out {out}: give a .npy file name (the features; the image paths go "
                f"in {out.with_suffix('.csv').name} beside it)"
            )
        return cls(out, out.with_suffix(".csv"), out.with_suffix(".rejected.csv"))


@dataclass(frozen=True)
class EmbedSummary:
    embedded: int
    rejected: int
    dimensions: int
    outputs: EmbedOutputs


def load_encoder_checkpoint(path: str | Path) -> dict:
    """The checkpoint in `path` (a method's model folder, e.g. data/06_models/ijepa, or
    its encoder.pt), refused with the reason when it cannot prepare new images."""
    path = Path(path)
    file = path / ENCODER_FILE if path.is_dir() else path
    if not file.is_file():
        raise EmbedInputError(
            f"--encoder {path}: no {ENCODER_FILE} there; give a method's model folder "
            "(data/06_models/<method>) after `kedro run`, or its encoder.pt"
        )
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    if "normalization" not in checkpoint.get("config", {}):
        raise EmbedInputError(
            f"--encoder {file} was written by an older selfsup and does not record its "
            "input normalization; rerun the pretraining pipeline to rewrite it"
        )
    return checkpoint


def _batches(paths: list[str], decode, batch_size: int, workers: int) -> Iterator[list]:
    """Decoded batches in order; the pool decodes batch i + 1 while batch i is used,
    and never more, so memory holds at most two batches of images."""
    windows = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    if workers == 1:
        yield from ([decode(p) for p in window] for window in windows)
        return
    # fork: the workers run only Pillow and numpy (as in the image_folder source).
    method = "fork" if sys.platform == "linux" else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        pending = pool.map_async(decode, windows[0]) if windows else None
        for index in range(len(windows)):
            results = pending.get()
            if index + 1 < len(windows):
                pending = pool.map_async(decode, windows[index + 1])
            yield results


class _FeatureRows:
    """Feature rows written into a memory-mapped `.npy` as batches arrive; allocated for
    every scanned file at the first batch (the width is known then), cut to the rows
    written at the end, and renamed into place only when complete."""

    def __init__(self, final: Path, capacity: int) -> None:
        self.final = final
        self.partial = final.with_name(f".{final.name}.partial")
        self.capacity = capacity
        self.array: np.memmap | None = None
        self.count = 0

    def append(self, rows: np.ndarray) -> None:
        if self.array is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            shape = (self.capacity, rows.shape[1])
            self.array = open_memmap(self.partial, "w+", np.float32, shape)
        self.array[self.count : self.count + len(rows)] = rows
        self.count += len(rows)

    def finish(self) -> int:
        """Writes the final file; returns the feature width."""
        array = self.array
        array.flush()
        width = array.shape[1]
        if self.count == self.capacity:
            os.replace(self.partial, self.final)
            return width
        step = max(1, (64 << 20) // (width * 4))

        def write(tmp: Path) -> None:
            kept = open_memmap(tmp, "w+", np.float32, (self.count, width))
            for start in range(0, self.count, step):
                stop = min(self.count, start + step)
                kept[start:stop] = array[start:stop]
            kept.flush()

        atomic_write(self.final, write)
        return width

    def discard(self) -> None:
        self.array = None
        self.partial.unlink(missing_ok=True)


def embed_folder(
    encoder: str | Path,
    images: str | Path,
    out: str | Path,
    pooling: str = "last",
    grid_cells: int = 4,
    batch_size: int = 256,
    resize: str = "shorter_side_crop",
    workers: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> EmbedSummary:
    """Embed every image file under `images` (sub-folders included) with the encoder in
    `encoder`; write `out` (.npy) and the CSVs beside it (module docstring). Every
    argument is checked before any file is decoded."""
    outputs = EmbedOutputs.beside(Path(out))
    checkpoint = load_encoder_checkpoint(encoder)
    config = checkpoint["config"]
    grid = config["image_size"] // config["patch_size"]
    try:
        check_pooling(
            pooling, grid_cells, config["encoder"]["depth"], grid, ("--pooling", "--grid-cells")
        )
    except ValueError as error:
        raise EmbedInputError(str(error)) from None
    model = encoder_from_checkpoint(checkpoint).to(resolve_device(device, "--device"))
    scan = scan_folder(Path(images), labels="none")
    if not scan.files:
        raise EmbedInputError(f"--images {images}: no image files found under it")
    root = Path(images).resolve()
    decode = partial(
        decode_file, settings=DecodeSettings(config["image_size"], config["in_chans"], resize)
    )
    rejected = [{"path": entry["path"], "reason": entry["reason"]} for entry in scan.rejected]
    kept_paths: list[str] = []
    features = _FeatureRows(outputs.features, len(scan.files))
    bar = tqdm(total=len(scan.files), desc="embed", unit="image", disable=not progress)
    batches = _batches(
        [str(root / relative) for relative in scan.files],
        decode,
        batch_size,
        workers or os.cpu_count() or 1,
    )
    try:
        for first, results in zip(range(0, len(scan.files), batch_size), batches, strict=True):
            decoded = []
            for relative, (array, reason) in zip(scan.files[first:], results, strict=False):
                if array is None:
                    rejected.append({"path": as_text(relative), "reason": reason})
                else:
                    decoded.append(array)
                    kept_paths.append(as_text((Path(images) / relative).as_posix()))
            if decoded:
                batch = to_model_input(np.stack(decoded), config["normalization"])
                features.append(encoder_features(model, batch, pooling, len(decoded), grid_cells))
            bar.update(len(results))
        if not kept_paths:
            raise EmbedInputError(
                f"--images {images}: none of its {len(scan.files)} files could be decoded "
                f"(reasons in {outputs.rejected})"
            )
        width = features.finish()
    finally:
        bar.close()
        features.discard()
        _write_rows(outputs.rejected, ["path", "reason"], sorted(rejected, key=lambda e: e["path"]))
    _write_rows(outputs.paths, ["path"], [{"path": path} for path in kept_paths])
    return EmbedSummary(len(kept_paths), len(rejected), width, outputs)


def _write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)
