"""The `arrays` (.npy/.npz) and `cifar` (pickled "python version" batches) sources."""

from __future__ import annotations

import gc
import io
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from selfsup.data.array_sources import RestrictedUnpickler, restricted_load
from selfsup.data.sources import load_source

# --------------------------------------------------------------------------- helpers


class TouchOnUnpickle:
    """Unpickling this calls `Path.touch(marker)`: stands in for `os.system(...)`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class ExecOnUnpickle:
    """Unpickling this calls `exec(...)`, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did for the original CIFAR files: protocol 2, every `str`
    and `bytes` as a byte string (SHORT_BINSTRING/BINSTRING), no `_codecs.encode`."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x (which wrote the real files) names the module numpy.core.multiarray.
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_pickle(path: Path, obj, style: str = "py2") -> Path:
    path.write_bytes(py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=4))
    return path


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def cifar_batch(data: np.ndarray, labels: list[int], name: bytes = b"batch") -> dict:
    return {
        b"batch_label": name,
        b"labels": labels,
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(len(data))],
    }


CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


def cifar10_folder(root: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_pickle(root / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_vis": 3072})
    for name, (data, labels) in batches.items():
        write_pickle(root / name, cifar_batch(data, labels, name.encode()))
    return root


def load_arrays(**options):
    return load_source(
        "arrays", {key: None if value is None else str(value) for key, value in options.items()}
    )


def load_cifar(path: Path, **options):
    return load_source("cifar", {"path": str(path), **options})


# --------------------------------------------------------------------------- arrays source


def test_npz_grayscale_images_and_integer_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 5, 6), dtype=np.uint8)
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=np.array([7, 3, 7, 9]))

    data = load_arrays(path=path)

    assert data.images.shape == (4, 5, 6, 1)
    assert data.images.dtype == np.uint8
    assert data.images.flags.c_contiguous
    np.testing.assert_array_equal(data.images[..., 0], images)
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [1, 0, 1, 2]
    assert data.class_names == ["3", "7", "9"]


def test_npz_negative_and_unsorted_integer_labels_are_sorted_by_value(tmp_path):
    path = tmp_path / "set.npz"
    labels = np.array([10, -2, 0, 10, -2, 3], dtype=np.int16)
    np.savez(path, images=np.zeros((6, 4, 4), np.uint8), labels=labels)

    data = load_arrays(path=path)

    assert data.labels.tolist() == [3, 0, 1, 3, 0, 2]
    assert data.class_names == ["-2", "0", "3", "10"]


def test_npz_rgb_uint8_images_are_kept(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "rgb.npz"
    np.savez(path, images=images, labels=np.array([0, 1, 0, 1, 0, 1]))

    data = load_arrays(path=path)

    assert data.images.shape == (6, 4, 4, 3)
    assert data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, images)
    assert data.class_names == ["0", "1"]


def test_npz_single_channel_last_axis_is_kept(tmp_path):
    images = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4, 1)
    path = tmp_path / "gray.npz"
    np.savez(path, images=images, labels=np.arange(6) % 2)

    data = load_arrays(path=path)

    assert data.images.shape == (6, 4, 4, 1)
    np.testing.assert_array_equal(data.images, images)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_in_unit_range_become_rounded_uint8(tmp_path, dtype):
    images = np.zeros((2, 2, 3), dtype=dtype)
    images[0] = [[0.0, 1.0, 0.5], [0.25, 0.75, 0.1]]
    images[1] = [[1 / 255, 254 / 255, 0.002], [0.998, 0.4, 0.6]]
    path = tmp_path / "float.npz"
    np.savez(path, images=images, labels=np.array([0, 1]))

    data = load_arrays(path=path)

    assert data.images.dtype == np.uint8
    assert data.images.shape == (2, 2, 3, 1)
    # rint rounds half to even: 127.5 -> 128, 63.75 -> 64, 0.51 -> 1
    expected = [
        [[0, 255, 128], [64, 191, 26]],
        [[1, 254, 1], [254, 102, 153]],
    ]
    assert data.images[..., 0].tolist() == expected
    np.testing.assert_array_equal(
        data.images[..., 0], np.rint(images.astype(np.float64) * 255).astype(np.uint8)
    )


def test_float32_multiples_of_one_255th_round_trip_exactly(tmp_path):
    values = (np.arange(256, dtype=np.float64) / 255).astype(np.float32)
    images = np.stack([values.reshape(16, 16), values[::-1].reshape(16, 16)])
    path = tmp_path / "levels.npz"
    np.savez(path, images=images, labels=np.array([0, 1]))

    data = load_arrays(path=path)

    assert data.images[0, ..., 0].ravel().tolist() == list(range(256))
    assert data.images[1, ..., 0].ravel().tolist() == list(range(255, -1, -1))


def test_string_labels_become_sorted_class_names(tmp_path):
    path = tmp_path / "named.npz"
    labels = np.array(["dog", "cat", "zebra", "cat", "dog", "ant"])
    assert labels.dtype.kind == "U"
    np.savez(path, images=np.zeros((6, 4, 4, 3), np.uint8), labels=labels)

    data = load_arrays(path=path)

    assert data.class_names == ["ant", "cat", "dog", "zebra"]
    assert data.labels.tolist() == [2, 1, 3, 1, 2, 0]
    assert data.labels.dtype == np.int64


def test_custom_npz_keys(tmp_path):
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    path = tmp_path / "keys.npz"
    np.savez(path, x_train=images, y_train=np.array([5, 6, 5]), images=np.zeros((1, 2, 2)))

    data = load_arrays(path=path, images_key="x_train", labels_key="y_train")

    np.testing.assert_array_equal(data.images[..., 0], images)
    assert data.labels.tolist() == [0, 1, 0]
    assert data.class_names == ["5", "6"]


def test_npy_images_with_labels_path(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", np.array([2, 4, 2, 4, 8]))

    data = load_arrays(path=tmp_path / "images.npy", labels_path=tmp_path / "labels.npy")

    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [0, 1, 0, 1, 2]
    assert data.class_names == ["2", "4", "8"]


def test_npy_without_labels_path_is_an_unlabelled_memory_mapped_set(tmp_path):
    path = tmp_path / "images.npy"
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    np.save(path, images)

    data = load_arrays(path=path)
    assert not data.labelled and data.class_names == []
    assert data.labels.tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(data.images[..., 0], images)
    # Read through a read-only map of the file, not copied into memory.
    assert isinstance(data.images.base, np.memmap) or isinstance(data.images, np.memmap)
    assert not data.images.flags.writeable
    assert data.paths == [f"{path}[{i}]" for i in range(3)]


def test_npz_with_labels_key_null_is_unlabelled(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((4, 5, 5), np.uint8), labels=np.arange(4))
    data = load_arrays(path=path, labels_key=None)
    assert not data.labelled and (data.labels == -1).all()


def test_npz_with_labels_path_names_labels_key(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((4, 5, 5), np.uint8), labels=np.arange(4))
    with pytest.raises(ValueError, match="labels_key"):
        load_arrays(path=path, labels_path=tmp_path / "y.npy")


def test_npy_with_missing_labels_file(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((3, 4, 4), np.uint8))
    missing = tmp_path / "nope.npy"

    with pytest.raises(FileNotFoundError, match="labels file") as caught:
        load_arrays(path=tmp_path / "images.npy", labels_path=missing)
    assert str(missing) in str(caught.value)


def test_loading_does_not_modify_the_file(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((4, 4, 4), np.uint8), labels=np.array([0, 1, 0, 1]))
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns

    load_arrays(path=path)
    load_arrays(path=path)

    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.npz"]


def test_loaded_images_do_not_alias_between_loads(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.full((2, 4, 4), 9, np.uint8), labels=np.array([0, 1]))

    first = load_arrays(path=path)
    first.images[...] = 0
    second = load_arrays(path=path)

    assert (second.images == 9).all()


@pytest.mark.parametrize(
    ("missing", "option"), [("images", "images_key"), ("labels", "labels_key")]
)
def test_missing_npz_key_names_file_key_available_keys_and_option(tmp_path, missing, option):
    path = tmp_path / "set.npz"
    arrays = {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1])}
    del arrays[missing]
    arrays["extra"] = np.zeros(2)
    np.savez(path, **arrays)

    with pytest.raises(KeyError) as caught:
        load_arrays(path=path)

    message = caught.value.args[0]
    assert str(path) in message
    assert repr(missing) in message
    assert str(sorted(arrays)) in message
    assert f"ingestion.options.{option}" in message


def test_custom_key_that_is_absent_is_named(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))

    with pytest.raises(KeyError, match="'x_train'") as caught:
        load_arrays(path=path, images_key="x_train")
    assert "['images', 'labels']" in caught.value.args[0]
    assert "ingestion.options.images_key" in caught.value.args[0]


@pytest.mark.parametrize(
    "shape",
    [(6, 16), (2, 3, 4, 4, 1), (3, 4, 4, 2), (3, 4, 4, 4), (0, 4, 4), (0, 4, 4, 3), (5,)],
)
def test_bad_image_shapes_are_refused_with_the_shape(tmp_path, shape):
    path = tmp_path / "bad.npz"
    n = shape[0]
    np.savez(path, images=np.zeros(shape, np.uint8), labels=np.arange(n) % 2)

    with pytest.raises(ValueError, match="expected \\(N, H, W\\)") as caught:
        load_arrays(path=path)
    # (N, H, W) input is reported after gaining its channel axis: (0, 4, 4) -> (0, 4, 4, 1)
    assert f"images have shape {str(shape)[:-1]}" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.int8, np.bool_])
def test_non_uint8_non_float_dtypes_are_refused(tmp_path, dtype):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 4, 4), dtype), labels=np.array([0, 1]))

    with pytest.raises(ValueError, match=f"images have dtype {np.dtype(dtype)}") as caught:
        load_arrays(path=path)
    assert str(path) in str(caught.value)
    assert "uint8" in str(caught.value)


@pytest.mark.parametrize(("bad", "shown"), [(1.5, "[0.0, 1.5]"), (-0.25, "[-0.25, 0.5]")])
def test_float_values_outside_unit_range_are_refused(tmp_path, bad, shown):
    images = np.zeros((2, 4, 4), np.float32)
    images[0, 0, 0] = 0.5
    images[1, 2, 3] = bad
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=np.array([0, 1]))

    with pytest.raises(ValueError, match="must be in \\[0, 1\\]") as caught:
        load_arrays(path=path)
    assert shown in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(np.nan, "hold 2 NaN and 0 infinite values"), (np.inf, "hold 0 NaN and 2 infinite values")],
)
def test_nan_and_infinite_pixels_are_named_as_such(tmp_path, bad, shown):
    """Not as a range inside [0, 1], which is what NaN-skipping min and max give."""
    images = np.full((3, 4, 4), 0.5, np.float32)
    images[1, 0, 0] = images[2, 3, 3] = bad
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=np.array([0, 1, 1]))

    with pytest.raises(ValueError, match=shown) as caught:
        load_arrays(path=path)
    assert "(the first in image 1)" in str(caught.value)
    assert str(path) in str(caught.value)


def test_label_count_mismatch(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((4, 4, 4), np.uint8), labels=np.array([0, 1, 0]))

    with pytest.raises(ValueError, match="labels have shape \\(3,\\) but there are 4 images"):
        load_arrays(path=path)


def test_two_dimensional_labels_are_refused(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((4, 4, 4), np.uint8), labels=np.array([[0], [1], [0], [1]]))

    with pytest.raises(ValueError, match="labels have shape \\(4, 1\\)"):
        load_arrays(path=path)


@pytest.mark.parametrize(
    "labels",
    [np.array([0.0, 1.0, 0.0]), np.array([True, False, True])],
)
def test_non_integer_non_string_labels_are_refused(tmp_path, labels):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=labels)

    with pytest.raises(ValueError, match=f"labels have dtype {labels.dtype}") as caught:
        load_arrays(path=path)
    assert "integers or strings" in str(caught.value)


@pytest.mark.parametrize("labels", [np.array([4, 4, 4]), np.array(["cat", "cat", "cat"])])
def test_a_single_class_is_refused(tmp_path, labels):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=labels)

    with pytest.raises(ValueError, match="two classes") as caught:
        load_arrays(path=path)
    assert str(labels[0]) in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["missing.npz", "missing.npy"])
def test_nonexistent_file(tmp_path, name):
    path = tmp_path / name

    labels = {"labels_path": tmp_path / "labels.npy"} if name.endswith(".npy") else {}
    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        load_arrays(path=path, **labels)
    assert str(path) in str(caught.value)
    assert "ingestion.options" in str(caught.value)


def test_a_directory_is_not_a_file(tmp_path):
    folder = tmp_path / "set.npz"
    folder.mkdir()

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_arrays(path=folder)


@pytest.mark.parametrize("name", ["set.txt", "set.npz.gz", "set", "set.NPZ"])
def test_wrong_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("images")

    with pytest.raises(ValueError, match="reads .npy or .npz files") as caught:
        load_arrays(path=path)
    assert str(path) in str(caught.value)


def test_unknown_option_is_named(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))

    with pytest.raises(ValueError, match="ingestion.options.imagekey") as caught:
        load_arrays(path=path, imagekey="images")
    assert "the arrays source" in str(caught.value)


def test_missing_path_option_is_named():
    with pytest.raises(ValueError, match="ingestion.options.path") as caught:
        load_source("arrays", {"images_key": "x"})
    assert "the arrays source" in str(caught.value)


def test_non_string_option_is_named(tmp_path):
    with pytest.raises(ValueError, match="ingestion.options.images_key"):
        load_source("arrays", {"path": str(tmp_path / "a.npz"), "images_key": 3})


def test_npy_of_objects_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "images.npy"
    np.save(path, np.array([TouchOnUnpickle(marker)], dtype=object), allow_pickle=True)
    np.save(tmp_path / "labels.npy", np.array([0]))

    with pytest.raises(ValueError, match="cannot be read without unpickling") as caught:
        load_arrays(path=path, labels_path=tmp_path / "labels.npy")

    assert str(path) in str(caught.value)
    assert not marker.exists()


def test_labels_npy_of_objects_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "images.npy", np.zeros((2, 4, 4), np.uint8))
    labels = tmp_path / "labels.npy"
    np.save(labels, np.array([ExecOnUnpickle(marker), 1], dtype=object), allow_pickle=True)

    with pytest.raises(ValueError, match="cannot be read without unpickling") as caught:
        load_arrays(path=tmp_path / "images.npy", labels_path=labels)

    assert str(labels) in str(caught.value)
    assert not marker.exists()


def test_raw_pickle_named_npy_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "images.npy"
    path.write_bytes(pickle.dumps(TouchOnUnpickle(marker)))
    # Control: the payload is live when unpickled without restrictions.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(TouchOnUnpickle(control)))
    assert control.exists()

    with pytest.raises(ValueError, match="cannot be read without unpickling"):
        load_arrays(path=path, labels_path=path)
    assert not marker.exists()


@pytest.mark.parametrize("key", ["images", "labels"])
def test_npz_with_object_array_is_refused_without_running_code(tmp_path, key):
    marker = tmp_path / "pwned"
    arrays = {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, 1])}
    arrays[key] = np.array([TouchOnUnpickle(marker), 0], dtype=object)
    path = tmp_path / "set.npz"
    np.savez(path, allow_pickle=True, **arrays)

    with pytest.raises(ValueError, match="pickle"):
        load_arrays(path=path)

    assert not marker.exists()


def test_npz_with_object_array_error_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(
        path,
        allow_pickle=True,
        images=np.array([{"a": 1}, None], dtype=object),
        labels=np.array([0, 1]),
    )

    with pytest.raises(ValueError, match="cannot be read without unpickling") as caught:
        load_arrays(path=path)
    assert str(path) in str(caught.value)


def test_npz_that_is_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "set.npz"
    path.write_bytes(b"not a zip archive at all")

    with pytest.raises(ValueError) as caught:
        load_arrays(path=path)
    assert str(path) in str(caught.value)


def test_npz_written_by_zipfile_is_read(tmp_path):
    """An .npz is a zip of .npy members; one written by other tools reads the same."""
    path = tmp_path / "set.npz"
    members = {"images": np.full((2, 4, 4), 200, np.uint8), "labels": np.array(["b", "a"])}
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in members.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())

    data = load_arrays(path=path)

    assert (data.images == 200).all()
    assert data.class_names == ["a", "b"]
    assert data.labels.tolist() == [1, 0]


def test_bad_labels_file_is_named_in_the_error(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((3, 4, 4), np.uint8))
    labels = tmp_path / "labels.npy"
    np.save(labels, np.array([0.0, 1.0, 0.0]))

    with pytest.raises(ValueError, match="labels have dtype float64") as caught:
        load_arrays(path=tmp_path / "images.npy", labels_path=labels)
    assert str(labels) in str(caught.value)


# --------------------------------------------------------------------------- cifar source


def test_cifar10_images_labels_and_class_names(tmp_path):
    train, test = cifar_rows(4, seed=3), cifar_rows(2, seed=4)
    # One row with a distinct constant per channel and a known pixel layout.
    train[1, :1024] = 10
    train[1, 1024:2048] = 20
    train[1, 2048:] = 30
    train[1, 5] = 200  # red, row 0, column 5
    train[1, 1024 + 32 * 2 + 7] = 201  # green, row 2, column 7
    train[1, 2048 + 32 * 31 + 31] = 202  # blue, row 31, column 31
    root = cifar10_folder(
        tmp_path / "cifar-10-batches-py",
        {"data_batch_1": (train, [6, 9, 9, 4]), "test_batch": (test, [3, 8])},
    )

    data = load_cifar(root)

    assert data.images.shape == (6, 32, 32, 3)
    assert data.images.dtype == np.uint8
    assert data.images.flags.c_contiguous
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [6, 9, 9, 4, 3, 8]
    assert data.class_names == [name.decode() for name in CIFAR10_NAMES]
    for row, image in zip(np.concatenate([train, test]), data.images, strict=True):
        np.testing.assert_array_equal(image, row.reshape(3, 32, 32).transpose(1, 2, 0))
    special = data.images[1]
    assert special[0, 0].tolist() == [10, 20, 30]
    assert special[0, 5].tolist() == [200, 20, 30]
    assert special[2, 7].tolist() == [10, 201, 30]
    assert special[31, 31].tolist() == [10, 20, 202]


def test_cifar10_default_batches_are_read_in_canonical_order(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    rows = {name: cifar_rows(2, seed=i) for i, name in enumerate(["test_batch", "data_batch_3"])}
    rows["data_batch_1"] = cifar_rows(2, seed=7)
    labels = {"test_batch": [0, 1], "data_batch_3": [2, 3], "data_batch_1": [4, 5]}
    # Written in a different order than they are read; unrelated files are ignored.
    cifar10_folder(root, {name: (rows[name], labels[name]) for name in rows})
    write_pickle(root / "readme.html", {b"data": cifar_rows(1, seed=9), b"labels": [0]})

    data = load_cifar(root)

    assert data.labels.tolist() == [4, 5, 2, 3, 0, 1]
    expected = np.concatenate([rows["data_batch_1"], rows["data_batch_3"], rows["test_batch"]])
    np.testing.assert_array_equal(
        data.images, expected.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )


def test_cifar10_batches_option_selects_and_orders_files(tmp_path):
    one, two, test = cifar_rows(2, 1), cifar_rows(3, 2), cifar_rows(1, 3)
    root = cifar10_folder(
        tmp_path / "cifar",
        {
            "data_batch_1": (one, [1, 1]),
            "data_batch_2": (two, [2, 2, 2]),
            "test_batch": (test, [0]),
        },
    )

    data = load_cifar(root, batches=["test_batch", "data_batch_1"])

    assert data.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(
        data.images, np.concatenate([test, one]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )


def test_cifar_listed_missing_batch_is_named(tmp_path):
    root = cifar10_folder(tmp_path / "cifar", {"data_batch_1": (cifar_rows(2, 1), [0, 1])})

    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        load_cifar(root, batches=["data_batch_1", "data_batch_2"])
    assert str(root / "data_batch_2") in str(caught.value)


def test_cifar10_written_by_python3_pickle_is_read(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    rows = cifar_rows(3, seed=5)
    write_pickle(root / "batches.meta", {b"label_names": CIFAR10_NAMES}, style="py3")
    write_pickle(root / "data_batch_1", cifar_batch(rows, [0, 5, 9]), style="py3")

    data = load_cifar(root)

    assert data.labels.tolist() == [0, 5, 9]
    np.testing.assert_array_equal(data.images, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert data.class_names[9] == "truck"


def cifar100_folder(root: Path, train: np.ndarray, test: np.ndarray) -> Path:
    root.mkdir(parents=True)
    write_pickle(
        root / "meta",
        {
            b"fine_label_names": [b"apple", b"bear", b"cloud", b"dolphin"],
            b"coarse_label_names": [b"fruit", b"mammal"],
        },
    )
    for name, data, fine, coarse in [
        ("train", train, [0, 1, 3, 2], [0, 1, 1, 1]),
        ("test", test, [1, 0], [1, 0]),
    ]:
        write_pickle(
            root / name,
            {
                b"filenames": [b"x.png"] * len(data),
                b"batch_label": name.encode(),
                b"fine_labels": fine,
                b"coarse_labels": coarse,
                b"data": data,
            },
        )
    return root


def test_cifar100_fine_labels_by_default(tmp_path):
    train, test = cifar_rows(4, 11), cifar_rows(2, 12)
    root = cifar100_folder(tmp_path / "cifar-100-python", train, test)

    data = load_cifar(root)

    assert data.images.shape == (6, 32, 32, 3)
    assert data.labels.tolist() == [0, 1, 3, 2, 1, 0]
    assert data.class_names == ["apple", "bear", "cloud", "dolphin"]
    np.testing.assert_array_equal(
        data.images, np.concatenate([train, test]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )


def test_cifar100_coarse_label_mode(tmp_path):
    root = cifar100_folder(tmp_path / "cifar-100-python", cifar_rows(4, 1), cifar_rows(2, 2))

    data = load_cifar(root, label_mode="coarse")

    assert data.labels.tolist() == [0, 1, 1, 1, 1, 0]
    assert data.class_names == ["fruit", "mammal"]


def test_cifar100_batches_option(tmp_path):
    test = cifar_rows(2, 2)
    root = cifar100_folder(tmp_path / "cifar-100-python", cifar_rows(4, 1), test)

    data = load_cifar(root, batches=["test"])

    assert data.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(data.images, test.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_cifar_loading_does_not_modify_the_folder(tmp_path):
    root = cifar10_folder(tmp_path / "cifar", {"data_batch_1": (cifar_rows(2, 1), [0, 1])})
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.iterdir()}

    load_cifar(root)

    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.iterdir()} == before


def test_cifar_nonexistent_folder(tmp_path):
    missing = tmp_path / "cifar-10-batches-py"

    with pytest.raises(FileNotFoundError, match="ingestion.options.path") as caught:
        load_cifar(missing)
    assert str(missing) in str(caught.value)


def test_cifar_path_that_is_a_file(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"\x1f\x8b")

    with pytest.raises(FileNotFoundError, match="ingestion.options.path"):
        load_cifar(path)


def test_cifar_folder_without_meta(tmp_path):
    root = tmp_path / "cifar"
    root.mkdir()
    write_pickle(root / "data_batch_1", cifar_batch(cifar_rows(2, 1), [0, 1]))

    with pytest.raises(FileNotFoundError, match="neither batches.meta") as caught:
        load_cifar(root)
    assert str(root) in str(caught.value)
    assert "ingestion.options.path" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (np.zeros((2, 3072), np.float32), "float32 (2, 3072)"),
        (np.zeros((2, 3072), np.int64), "int64 (2, 3072)"),
        (np.zeros((2, 1024), np.uint8), "uint8 (2, 1024)"),
        (np.zeros((2, 3, 32, 32), np.uint8), "uint8 (2, 3, 32, 32)"),
        (np.zeros(3072, np.uint8), "uint8 (3072,)"),
    ],
)
def test_cifar_batch_with_wrong_data_is_named(tmp_path, data, shown):
    root = cifar10_folder(tmp_path / "cifar", {})
    write_pickle(root / "data_batch_1", cifar_batch(data, [0, 1]))

    with pytest.raises(ValueError, match="expected uint8 \\(N, 3072\\)") as caught:
        load_cifar(root)
    assert str(root / "data_batch_1") in str(caught.value)
    assert shown in str(caught.value)


@pytest.mark.parametrize(
    "batch",
    [
        [1, 2, 3],
        {b"labels": [0, 1]},
        {b"data": np.zeros((2, 3072), np.uint8)},
        {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]},
    ],
)
def test_cifar_file_that_is_not_a_batch_is_named(tmp_path, batch):
    root = cifar10_folder(tmp_path / "cifar", {})
    write_pickle(root / "data_batch_1", batch, style="py3")

    with pytest.raises(ValueError, match="not a cifar-10 batch") as caught:
        load_cifar(root)
    assert str(root / "data_batch_1") in str(caught.value)


def test_cifar100_batch_without_coarse_labels_is_named(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    write_pickle(root / "meta", {b"fine_label_names": [b"a", b"b"], b"coarse_label_names": [b"c"]})
    write_pickle(root / "train", {b"data": cifar_rows(2, 1), b"fine_labels": [0, 1]})

    with pytest.raises(ValueError, match="b'coarse_labels'") as caught:
        load_cifar(root, label_mode="coarse")
    assert "not a cifar-100 batch" in str(caught.value)


@pytest.mark.parametrize("labels", [[0, 10], [-1, 3]])
def test_cifar_labels_outside_the_class_names_are_refused(tmp_path, labels):
    root = cifar10_folder(tmp_path / "cifar", {"data_batch_1": (cifar_rows(2, 1), labels)})

    with pytest.raises(ValueError, match="labels outside 0..9") as caught:
        load_cifar(root)
    assert str(root) in str(caught.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"label_mode": "medium"}, "ingestion.options.label_mode"),
        ({"batches": []}, "ingestion.options.batches"),
        ({"batch": ["test_batch"]}, "ingestion.options.batch"),
    ],
)
def test_cifar_bad_options_are_named(tmp_path, options, field):
    with pytest.raises(ValueError, match=field) as caught:
        load_cifar(tmp_path, **options)
    assert "the cifar source" in str(caught.value)


def test_cifar_missing_path_option():
    with pytest.raises(ValueError, match="ingestion.options.path"):
        load_source("cifar", {})


def test_cifar_batch_with_wrong_label_count_is_named(tmp_path):
    root = cifar10_folder(
        tmp_path / "cifar",
        {
            "data_batch_1": (cifar_rows(2, 1), [0, 1, 2]),  # one label too many
            "test_batch": (cifar_rows(2, 2), [3]),  # one label too few
        },
    )

    with pytest.raises(ValueError) as caught:
        load_cifar(root)
    assert str(root / "data_batch_1") in str(caught.value)


def test_cifar_folder_without_batches_is_named(tmp_path):
    root = cifar10_folder(tmp_path / "cifar", {})

    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        load_cifar(root)
    assert str(root) in str(caught.value)


# --------------------------------------------------------------------------- security


@pytest.mark.parametrize(
    ("payload", "refused"),
    # Python 3.13 defines Path in pathlib._local; the pickle names that module.
    [(TouchOnUnpickle, r"pathlib(\._local)?\.Path\.touch"), (ExecOnUnpickle, r"builtins\.exec")],
)
@pytest.mark.parametrize("where", ["whole file", "inside the dict"])
def test_crafted_cifar_batch_is_refused_without_running_code(tmp_path, payload, refused, where):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    # Control: the same payload really does run under plain pickle.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(payload(control), protocol=4))
    assert control.exists()

    root = cifar10_folder(tmp_path / "cifar", {})
    batch = evil if where == "whole file" else cifar_batch(cifar_rows(2, 1), [0, 1]) | {b"x": evil}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))

    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load {refused}"):
        load_cifar(root)
    assert not marker.exists()


def test_crafted_cifar_meta_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    root = cifar10_folder(tmp_path / "cifar", {"data_batch_1": (cifar_rows(2, 1), [0, 1])})
    meta = {b"label_names": CIFAR10_NAMES, b"x": ExecOnUnpickle(marker)}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.exec"):
        load_cifar(root)
    assert not marker.exists()


def test_crafted_protocol0_pickle_with_os_system_is_refused(tmp_path):
    """The classic textual exploit: GLOBAL os.system + REDUCE."""
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")

    with pytest.raises(pickle.UnpicklingError, match="refusing to load os.system"):
        restricted_load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "blob",
    [
        b"c__builtin__\neval\n(S'1'\ntR.",  # Python 2 name of builtins.eval
        b"cnumpy\nload\n(S'x'\ntR.",  # a numpy function that is not on the list
        b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\ncbuiltins\nobject\nNtR.",
        b"\x80\x02(cbuiltins\nobject\no.",  # OBJ opcode
        b"(ibuiltins\nobject\n.",  # INST opcode
    ],
)
def test_restricted_load_refuses_any_other_global(tmp_path, blob):
    path = tmp_path / "batch"
    path.write_bytes(blob)

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        restricted_load(path)


def test_restricted_load_refuses_persistent_ids(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"Pos.system\n.")

    with pytest.raises(pickle.UnpicklingError):
        restricted_load(path)


@pytest.mark.parametrize("style", ["py2", "py3"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 12),
        np.linspace(0, 1, 10, dtype=np.float32).reshape(2, 5),
        np.array([[1, -2], [3, 4]], dtype=">i4"),
        np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        np.array(["ab", "c"]),
    ],
)
def test_restricted_load_round_trips_numpy_arrays(tmp_path, style, array):
    path = write_pickle(tmp_path / "arrays", {b"x": array, b"n": [1, 2.5, None, True]}, style)

    loaded = restricted_load(path)

    assert set(loaded) == {b"x", b"n"}
    unrestricted = pickle.loads(path.read_bytes(), encoding="bytes")
    assert isinstance(loaded[b"x"], np.ndarray)
    # Same result as plain pickle (which itself loads '>i4' as native int32).
    assert loaded[b"x"].dtype == unrestricted[b"x"].dtype
    assert loaded[b"x"].dtype.kind == array.dtype.kind
    assert loaded[b"x"].dtype.itemsize == array.dtype.itemsize
    np.testing.assert_array_equal(loaded[b"x"], array)
    np.testing.assert_array_equal(loaded[b"x"], unrestricted[b"x"])
    assert loaded[b"n"] == [1, 2.5, None, True]


def test_restricted_load_keeps_python2_strings_as_bytes(tmp_path):
    path = write_pickle(tmp_path / "meta", {"label_names": ["cat", "dog"], "num": 3})

    assert restricted_load(path) == {b"label_names": [b"cat", b"dog"], b"num": 3}


def test_restricted_unpickler_find_class_directly():
    unpickler = RestrictedUnpickler(io.BytesIO(b""))

    assert unpickler.find_class("numpy", "ndarray") is np.ndarray
    assert unpickler.find_class("numpy", "dtype") is np.dtype
    for module, name in [("os", "system"), ("numpy", "load"), ("builtins", "getattr")]:
        with pytest.raises(pickle.UnpicklingError, match=f"refusing to load {module}.{name}"):
            unpickler.find_class(module, name)


def test_restricted_load_leaves_no_unclosed_file(tmp_path):
    path = write_pickle(tmp_path / "arrays", {b"x": np.zeros(3, np.uint8)})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restricted_load(path)
        gc.collect()

    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_byte_string_labels_are_decoded_class_names(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([b"dog", b"cat", b"dog"]))

    image_set = load_arrays(path=path)

    assert image_set.class_names == ["cat", "dog"]
    assert image_set.labels.tolist() == [1, 0, 1]


# --- damaged files: the error names the file and says it is damaged -------------------


def test_a_truncated_npy_is_reported_as_damaged_not_as_needing_unpickling(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((20, 8, 8), np.uint8))
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(ValueError, match="truncated or corrupt") as caught:
        load_arrays(path=path)
    assert str(path) in str(caught.value)
    assert "unpickling" not in str(caught.value)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_truncated_npz_names_the_file(tmp_path, keep):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 2)
    os.truncate(path, int(path.stat().st_size * keep))
    with pytest.raises(ValueError, match="truncated or corrupt") as caught:
        load_arrays(path=path)
    assert str(path) in str(caught.value)


def test_a_truncated_cifar_batch_names_the_file(tmp_path):
    root = cifar10_folder(tmp_path / "cifar", {"data_batch_1": (cifar_rows(4, 0), [0, 1, 2, 3])})
    batch = root / "data_batch_1"
    os.truncate(batch, batch.stat().st_size // 2)
    with pytest.raises(ValueError, match="truncated") as caught:
        load_cifar(root)
    assert str(batch) in str(caught.value)
    assert "download" in str(caught.value)


def test_a_cifar_meta_file_without_class_names_names_the_file(tmp_path):
    root = cifar10_folder(tmp_path / "cifar", {"data_batch_1": (cifar_rows(4, 0), [0, 1, 2, 3])})
    write_pickle(root / "batches.meta", {b"num_cases_per_batch": 4})
    with pytest.raises(ValueError, match="label_names") as caught:
        load_cifar(root)
    assert str(root / "batches.meta") in str(caught.value)
