"""The `image_folder` source: a folder tree of image files, decoded in parallel into a
memory-mapped scratch array.

Layout: with class sub-folders (`root/<class>/.../image.png`) every image is labelled
with its top-level folder's name (deeper folders belong to that class); a root that
holds only files, or `labels: none`, gives unlabelled images for pretraining. Class
indices follow the sorted folder names, so they are stable across runs and machines.

Nothing is written inside the root. Files that cannot be used are rejected, with a
reason, instead of failing the run; symlinks are never followed out of the root.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from selfsup.data.chunked import StagingArray
from selfsup.data.decode import DecodeSettings, decode_file
from selfsup.data.image_set import ImageSet
from selfsup.data.source_registry import register_source
from selfsup.params import StrictModel

logger = logging.getLogger(__name__)


class ImageFolderOptions(StrictModel):
    """`options` of the `image_folder` source."""

    path: str = Field(min_length=1)
    labels: Literal["auto", "folders", "none"] = "auto"
    size: int | None = Field(None, ge=1)  # default: masking.image_size
    channels: Literal[1, 3] = 3
    resize: Literal["shorter_side_crop", "stretch", "none"] = "shorter_side_crop"
    workers: int | None = Field(None, ge=1)  # default: every CPU core
    staging_dir: str = "data/02_intermediate"  # scratch space for one copy of the array
    # Images with more pixels (after JPEG's reduced-size decoding) are rejected unread.
    max_pixels: int = Field(64_000_000, ge=1)


@dataclass
class FolderScan:
    """What a walk of the root found, before any file is decoded."""

    files: list[str] = field(default_factory=list)  # relative to the root, sorted
    classes: list[str | None] = field(default_factory=list)  # per file; None = unlabelled
    class_names: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _symlink_inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def scan_folder(root: Path, labels: str) -> FolderScan:
    """Every candidate file under `root` and its class, in a stable order.

    Hidden files and folders (name starting with '.') are listed as ignored; symlinked
    folders are not entered and symlinked files pointing outside the root are rejected."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a folder; set "
            "ingestion.options.path to the folder that holds your images"
        )
    root = root.resolve()
    subfolders = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir(follow_symlinks=False) and not _is_hidden(entry.name)
    )
    labelled = labels == "folders" or (labels == "auto" and bool(subfolders))
    if labels == "folders" and not subfolders:
        raise ValueError(
            f"{root} has no class sub-folders (labels: folders); put each class's images "
            "in a sub-folder named after the class, or set ingestion.options.labels: none "
            "to use them unlabelled"
        )
    scan = FolderScan(class_names=subfolders if labelled else [])
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        relative_dir = here.relative_to(root)
        kept = []
        for name in sorted(dirnames):
            relative = (relative_dir / name).as_posix()
            if _is_hidden(name):
                scan.ignored.append({"path": relative, "reason": "hidden folder"})
            elif (here / name).is_symlink():
                scan.rejected.append(
                    {"path": relative, "reason": "symlinked folder (symlinks are not followed)"}
                )
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = here / name
            relative = (relative_dir / name).as_posix()
            if _is_hidden(name):
                scan.ignored.append({"path": relative, "reason": "hidden file"})
                continue
            if path.is_symlink() and not _symlink_inside(path, root):
                scan.rejected.append(
                    {"path": relative, "reason": "symlink leaving the source folder (not followed)"}
                )
                continue
            if labelled and relative_dir == Path("."):
                scan.rejected.append(
                    {"path": relative, "reason": "not inside a class folder (labels: folders)"}
                )
                continue
            scan.files.append(relative)
            scan.classes.append(relative_dir.parts[0] if labelled else None)
    # os.walk gives a folder's files before its sub-folders'; sort by the whole path.
    order = sorted(range(len(scan.files)), key=scan.files.__getitem__)
    scan.files = [scan.files[i] for i in order]
    scan.classes = [scan.classes[i] for i in order]
    return scan


def _check_labelled_scan(root: Path, scan: FolderScan) -> None:
    if not scan.files:
        raise ValueError(
            f"{root} holds no image files"
            + (f" ({len(scan.rejected)} rejected, see their reasons)" if scan.rejected else "")
            + "; set ingestion.options.path to the folder of your images"
        )
    if not scan.class_names:
        return
    if len(scan.class_names) < 2:
        raise ValueError(
            f"{root} has a single class folder {scan.class_names[0]!r}; the probes need at "
            "least two classes. Add class folders, or set ingestion.options.labels: none "
            "to pretrain on these images unlabelled"
        )
    present = set(scan.classes)
    empty = [name for name in scan.class_names if name not in present]
    if empty:
        raise ValueError(
            f"class folders {empty} in {root} hold no files; remove them or add images"
        )


def _decode_all(
    root: Path, scan: FolderScan, settings: DecodeSettings, workers: int, staging: Path
) -> tuple[np.ndarray, list[int]]:
    """Decode every scanned file; valid images fill a staging array in scan order."""
    staged = StagingArray(
        len(scan.files), (settings.size, settings.size, settings.channels), staging
    )
    kept: list[int] = []
    paths = [str(root / relative) for relative in scan.files]
    decode = partial(decode_file, settings=settings)
    progress = tqdm(
        total=len(paths),
        desc="decode images",
        unit="file",
        mininterval=0.5 if sys.stderr.isatty() else 15.0,
    )
    if workers == 1:
        results = map(decode, paths)
        pool = None
    else:
        # fork on Linux: workers start at once and share the parent's memory. The
        # alternatives re-import the main module in every worker (for `kedro run`, the
        # whole Kedro CLI: +24 MiB and a log line per worker). The workers only run
        # Pillow and numpy, so threads the parent may hold (torch) are never touched.
        method = "fork" if sys.platform == "linux" else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers)
        chunksize = max(1, min(64, len(paths) // (workers * 16)))
        results = pool.imap(decode, paths, chunksize=chunksize)
    try:
        for index, (array, reason) in enumerate(results):
            if array is None:
                scan.rejected.append({"path": scan.files[index], "reason": reason})
            else:
                staged.append(array)
                kept.append(index)
            progress.update(1)
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
    return staged.view(), kept


def as_text(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 (which Python keeps as
    surrogates) become `\\xNN` escapes, so the name can be written to CSV and JSON."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _named_as_text(entries: list[dict]) -> list[dict]:
    return [{**entry, "path": as_text(entry["path"])} for entry in entries]


class UnusableSourceError(ValueError):
    """The folder's files gave no usable image set; `rejected` says why, file by file."""

    def __init__(self, message: str, rejected: list[dict]) -> None:
        super().__init__(message)
        self.rejected = rejected


def summarize_rejections(rejected: list[dict], shown: int = 5) -> str:
    """The first few rejected files and why, for error messages."""
    lines = [f"{entry['path']}: {entry['reason']}" for entry in rejected[:shown]]
    more = f"; and {len(rejected) - shown} more" if len(rejected) > shown else ""
    return "; ".join(lines) + more


@register_source("image_folder", ImageFolderOptions)
def load_image_folder(config: ImageFolderOptions, image_size: int) -> ImageSet:
    root = Path(config.path)
    scan = scan_folder(root, config.labels)
    root = root.resolve()
    _check_labelled_scan(Path(config.path), scan)
    settings = DecodeSettings(
        config.size or image_size, config.channels, config.resize, config.max_pixels
    )
    workers = config.workers or os.cpu_count() or 1
    logger.info(
        "image_folder %s: decoding %d files (%s) with %d workers",
        config.path,
        len(scan.files),
        f"{len(scan.class_names)} classes" if scan.class_names else "unlabelled",
        workers,
    )
    images, kept = _decode_all(root, scan, settings, workers, Path(config.staging_dir))
    rejected = _named_as_text(sorted(scan.rejected, key=lambda entry: entry["path"]))
    if not kept:
        raise UnusableSourceError(
            f"none of the {len(scan.files)} files in {config.path} could be decoded: "
            + summarize_rejections(rejected),
            rejected,
        )
    files = [scan.files[i] for i in kept]
    if scan.class_names:
        index = {name: i for i, name in enumerate(scan.class_names)}
        labels = np.array([index[scan.classes[i]] for i in kept], dtype=np.int64)
        without = [name for i, name in enumerate(scan.class_names) if not (labels == i).any()]
        if without:
            named = {as_text(name) for name in without}
            in_empty = [e for e in rejected if Path(e["path"]).parts[0] in named]
            raise UnusableSourceError(
                f"class folders {without} in {config.path} have no image that could be "
                f"decoded ({summarize_rejections(in_empty)}); fix or remove them",
                rejected,
            )
    else:
        labels = np.full(len(kept), -1, dtype=np.int64)
    return ImageSet(
        images=images,
        labels=labels,
        class_names=[as_text(name) for name in scan.class_names],
        paths=[as_text((Path(config.path) / relative).as_posix()) for relative in files],
        rejected=rejected,
        ignored=_named_as_text(scan.ignored),
    )
