"""Sources that read images already stored as arrays: `.npy`/`.npz` files and CIFAR.

Both validate what they read and fail with the file, the problem and the fix before
any training starts. Neither executes code from the file: `.npy`/`.npz` are read with
`allow_pickle=False`, and CIFAR's pickled batches go through `RestrictedUnpickler`,
which builds only plain containers and numpy arrays.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from selfsup.data.chunked import rows_per_chunk
from selfsup.data.image_set import UNLABELLED, ImageSet
from selfsup.data.source_registry import register_source
from selfsup.params import StrictModel


class ArraysOptions(StrictModel):
    """`ingestion.options` of the `arrays` source."""

    path: str
    images_key: str = "images"  # array name inside an .npz
    labels_key: str | None = "labels"  # array name inside an .npz; null: unlabelled
    labels_path: str | None = None  # .npy of labels beside an .npy of images; null: unlabelled


class CifarOptions(StrictModel):
    """`ingestion.options` of the `cifar` source: the folder of the "python version"."""

    path: str
    label_mode: Literal["fine", "coarse"] = "fine"  # CIFAR-100 only
    batches: list[str] | None = Field(None, min_length=1)  # default: every batch present


def as_uint8_images(images: np.ndarray, path: Path) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8, or float in [0, 1], as uint8 (N, H, W, C)."""
    shape = images.shape
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"{path}: images have shape {shape}; expected (N, H, W) or (N, H, W, C) "
            "with N >= 1 and C = 1 or 3 (drop an alpha channel first)"
        )
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if np.issubdtype(images.dtype, np.floating):
        check_float_pixels(images, path)
        converted = np.empty(images.shape, dtype=np.uint8)
        step = rows_per_chunk(images.shape[1:], np.dtype(np.float64).itemsize)
        for start in range(0, images.shape[0], step):
            chunk = np.asarray(images[start : start + step], dtype=np.float64)
            converted[start : start + step] = np.rint(chunk * 255.0)
        return converted
    raise ValueError(
        f"{path}: images have dtype {images.dtype}; store them as uint8 (0..255) or as "
        "float in [0, 1]"
    )


def check_float_pixels(images: np.ndarray, path: Path) -> None:
    """Float pixels must be finite and in [0, 1]; the error says which rule fails where."""
    not_finite = ~np.isfinite(images)
    if not_finite.any():
        nan = int(np.isnan(images).sum())
        first = int(np.argwhere(not_finite.reshape(images.shape[0], -1).any(axis=1))[0, 0])
        raise ValueError(
            f"{path}: float images hold {nan} NaN and {int(not_finite.sum()) - nan} "
            f"infinite values (the first in image {first}); replace them, then store "
            "values in [0, 1] or uint8 0..255"
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{path}: float images must be in [0, 1], found values in [{low}, {high}]; "
            "rescale them to [0, 1] or store uint8 0..255"
        )


def indexed_labels(labels: np.ndarray, num_images: int, path: Path) -> tuple[np.ndarray, list]:
    """Integer or string labels as indices 0..K-1 (sorted by value) and the K class names."""
    labels = np.asarray(labels)
    if labels.shape != (num_images,):
        raise ValueError(
            f"{path}: labels have shape {labels.shape} but there are {num_images} images; "
            "store one label per image"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype.kind in "US"):
        raise ValueError(f"{path}: labels have dtype {labels.dtype}; store integers or strings")
    classes, indices = np.unique(labels, return_inverse=True)
    names = [name.decode() if isinstance(name, bytes) else str(name) for name in classes]
    if len(classes) < 2:
        raise ValueError(
            f"{path}: every image has the label {names[0]!r}; the probes need at least two classes"
        )
    return indices.astype(np.int64), names


def unreadable(path: Path, error: Exception) -> ValueError:
    """Why numpy could not read `path`: Python objects (which would need unpickling), or
    a damaged file."""
    if "allow_pickle" in str(error) or "Python objects" in str(error):
        return ValueError(
            f"{path}: cannot be read without unpickling ({error}); save it with numpy "
            "arrays of numbers or strings, not Python objects"
        )
    return ValueError(
        f"{path}: cannot be read ({type(error).__name__}: {error}); the file is truncated "
        "or corrupt: write or copy it again"
    )


def load_array(path: Path, what: str) -> np.ndarray | np.lib.npyio.NpzFile:
    """An .npz archive, or an .npy memory-mapped (read-only) so it may exceed memory."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; check ingestion.options")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix == ".npy" else None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise unreadable(path, error) from None


def npz_member(archive: np.lib.npyio.NpzFile, key: str, option: str, path: Path) -> np.ndarray:
    if key not in archive.files:
        raise KeyError(
            f"{path} has no array {key!r} (it holds {sorted(archive.files)}); set "
            f"ingestion.options.{option} to one of those"
        )
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise unreadable(path, error) from None


@register_source("arrays", ArraysOptions)
def load_arrays(config: ArraysOptions, image_size: int | None = None) -> ImageSet:
    """Images from one `.npz` (named arrays) or an `.npy`, with optional labels (an
    array in the `.npz` or a labels `.npy`). A uint8 `.npy` is memory-mapped, not read."""
    path = Path(config.path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: the arrays source reads .npy or .npz files")
    labels_file, labels = path, None
    if path.suffix == ".npz":
        if config.labels_path is not None:
            raise ValueError(
                f"{path}: ingestion.options.labels_path is for an .npy of images; in an "
                ".npz name the labels array with labels_key"
            )
        with load_array(path, "images") as archive:
            images = npz_member(archive, config.images_key, "images_key", path)
            if config.labels_key is not None:
                labels = npz_member(archive, config.labels_key, "labels_key", path)
    else:
        images = load_array(path, "images")
        if config.labels_path is not None:
            labels_file = Path(config.labels_path)
            if labels_file.suffix != ".npy":
                raise ValueError(f"{labels_file}: ingestion.options.labels_path must be an .npy")
            labels = np.asarray(load_array(labels_file, "labels"))
    images = as_uint8_images(images, path)
    paths = [f"{path}[{i}]" for i in range(images.shape[0])]
    if labels is None:
        unlabelled = np.full(images.shape[0], UNLABELLED, dtype=np.int64)
        return ImageSet(images=images, labels=unlabelled, class_names=[], paths=paths)
    indices, class_names = indexed_labels(labels, images.shape[0], labels_file)
    return ImageSet(images=images, labels=indices, class_names=class_names, paths=paths)


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle asked for something other than arrays, lists and strings."""


class RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; any other global (the way a
    crafted pickle runs code, e.g. `os.system`) raises instead of being imported.

    Allowed: numpy's array and dtype rebuilders (old and numpy 2 module names, in-band
    protocol-5 buffers) and `_codecs.encode`, with which Python 3 pickles bytes under
    protocols 0-2; none of them can reach arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise RefusedGlobalError(
                f"refusing to load {module}.{name}: CIFAR batches hold only arrays, lists "
                "and strings, so this file is not a CIFAR batch or has been tampered with"
            )
        return super().find_class(module, name)


def restricted_load(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            # The original batches were pickled by Python 2: their strings are bytes.
            return RestrictedUnpickler(handle, encoding="bytes").load()
    except RefusedGlobalError as error:
        raise RefusedGlobalError(f"{path}: {error}") from None
    except pickle.UnpicklingError as error:
        if "truncated" not in str(error):
            raise pickle.UnpicklingError(
                f"{path}: {error}; this is not a CIFAR file or it has been tampered with"
            ) from None
        raise ValueError(
            f"{path}: cannot be read as a CIFAR file ({error}); it is truncated: download "
            "and extract it again"
        ) from None
    except (EOFError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path}: cannot be read as a CIFAR file ({type(error).__name__}: {error}); it "
            "is truncated or corrupt: download and extract it again"
        ) from None


CIFAR_LAYOUTS = {
    # batch files, labels key per label mode, meta file and its class-name key per mode
    "cifar-10": (
        [
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
        ],
        {"fine": b"labels", "coarse": b"labels"},
        "batches.meta",
        {"fine": b"label_names", "coarse": b"label_names"},
    ),
    "cifar-100": (
        ["train", "test"],
        {"fine": b"fine_labels", "coarse": b"coarse_labels"},
        "meta",
        {"fine": b"fine_label_names", "coarse": b"coarse_label_names"},
    ),
}


@register_source("cifar", CifarOptions)
def load_cifar(config: CifarOptions, image_size: int | None = None) -> ImageSet:
    """CIFAR-10 or CIFAR-100 from the "python version" folder (train and test batches
    together: the pipeline makes its own split)."""
    root = Path(config.path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR folder {root} does not exist; set ingestion.options.path to the "
            "extracted cifar-10-batches-py or cifar-100-python folder"
        )
    layout = "cifar-10" if (root / "batches.meta").is_file() else "cifar-100"
    default_batches, label_keys, meta_name, name_keys = CIFAR_LAYOUTS[layout]
    if not (root / meta_name).is_file():
        raise FileNotFoundError(
            f"{root} has neither batches.meta (CIFAR-10) nor meta (CIFAR-100); point "
            "ingestion.options.path at the extracted python-version folder"
        )
    names = config.batches or [b for b in default_batches if (root / b).is_file()]
    if not names:
        raise FileNotFoundError(
            f"{root} holds none of the {layout} batches {default_batches}; point "
            "ingestion.options.path at the extracted python-version folder"
        )
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR batch {path} does not exist")
        batch = restricted_load(path)
        label_key = label_keys[config.label_mode]
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: not a {layout} batch (no data or {label_key!r})")
        data = np.asarray(batch[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        # Rows are channel-major (1024 red, 1024 green, 1024 blue values).
        batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        if batch_labels.shape != (data.shape[0],):
            raise ValueError(
                f"{path}: {batch_labels.size} labels for {data.shape[0]} images; the batch "
                "is incomplete or corrupt, download it again"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    meta = restricted_load(root / meta_name)
    name_key = name_keys[config.label_mode]
    if not isinstance(meta, dict) or name_key not in meta:
        raise ValueError(
            f"{root / meta_name}: has no {name_key!r} (the class names); not a {layout} meta "
            "file, or a damaged one: download and extract it again"
        )
    class_names = [n.decode() for n in meta[name_key]]
    all_labels = np.concatenate(labels)
    if all_labels.min() < 0 or all_labels.max() >= len(class_names):
        raise ValueError(f"{root}: labels outside 0..{len(class_names) - 1}")
    return ImageSet(
        images=np.ascontiguousarray(np.concatenate(images)),
        labels=all_labels,
        class_names=class_names,
    )
