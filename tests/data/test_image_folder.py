"""The `image_folder` source and the ingestion nodes on folders of image files.

Every folder is generated in `tmp_path` with Pillow and numpy; images are tiny so the
file runs in seconds. Decoding runs in-process (`workers: 1`) except where one test
compares it with a process pool.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from selfsup.config import IngestionConfig, MaskingConfig
from selfsup.data import chunked
from selfsup.data.chunked import ConcatenatedImages, StagingArray, write_npy
from selfsup.data.image_folder import scan_folder
from selfsup.data.image_set import ImageSet
from selfsup.data.sources import load_source
from selfsup.data.splits import stratified_split
from selfsup.datasets import NumpyDataset
from selfsup.pipelines.ingestion.nodes import accept_ingestion, ingest_images, report_dataset

MASKING = MaskingConfig(image_size=16, patch_size=2)

# --------------------------------------------------------------------------- helpers


def colour(index: int) -> tuple[int, int, int]:
    """A distinct colour per image, so each decoded image says which file it came from."""
    return (index * 37 % 256, index * 91 % 256, (index * 53 + 100) % 256)


def solid(index: int, height: int = 8, width: int = 8) -> np.ndarray:
    return np.broadcast_to(np.array(colour(index), np.uint8), (height, width, 3)).copy()


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_rgb(size: int) -> np.ndarray:
    """Gradients: what lossy codecs keep within a few grey levels."""
    ramp = np.linspace(0, 255, size)
    return np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))],
        axis=-1,
    ).astype(np.uint8)


def save(path: Path, pixels: np.ndarray | Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if isinstance(pixels, np.ndarray) else pixels
    image.save(path, **kwargs)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated_copy(source: Path, target: Path) -> Path:
    return write_bytes(target, source.read_bytes()[: source.stat().st_size // 2])


@pytest.fixture
def staging(tmp_path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def load(staging):
    """load_source("image_folder", ...) with one worker and scratch space in tmp_path."""

    def _load(root: Path, image_size: int = 8, **options) -> ImageSet:
        options = {"path": str(root), "workers": 1, "staging_dir": str(staging), **options}
        return load_source("image_folder", options, image_size)

    return _load


def make_labelled(root: Path, classes: dict[str, int], size: int = 8) -> dict[str, np.ndarray]:
    """`count` solid images per class folder; returns the pixels by relative path."""
    written, index = {}, 0
    for name, count in classes.items():
        for i in range(count):
            relative = f"{name}/{i:02d}.png"
            written[relative] = solid(index, size, size)
            save(root / relative, written[relative])
            index += 1
    return written


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file's and folder's (mtime_ns, size) and every file's content hash."""
    state = {".": (root.stat().st_mtime_ns, root.stat().st_size)}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            info = path.lstat()
            digest = (
                hashlib.sha256(path.read_bytes()).hexdigest()
                if path.is_file() and not path.is_symlink()
                else None
            )
            state[path.relative_to(root).as_posix()] = (info.st_mtime_ns, info.st_size, digest)
    return state


def open_files_under(directory: Path) -> list[str]:
    """Files in `directory` this process holds open or mapped (Linux /proc)."""
    prefix = str(directory.resolve()) + "/"
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    with open("/proc/self/maps") as maps:
        found += [line.split(None, 5)[-1].strip() for line in maps if prefix in line]
    return found


# --------------------------------------------------------------------------- formats


def test_every_format_in_a_folder_decodes_in_sorted_order(tmp_path, load):
    root = tmp_path / "flat"
    pixels = {name: random_rgb(12, 12, seed=i) for i, name in enumerate("abcdg")}
    pixels["e"] = pixels["f"] = smooth_rgb(12)
    save(root / "a.png", pixels["a"])
    save(root / "b.bmp", pixels["b"])
    save(root / "c.tif", pixels["c"])
    save(root / "d.webp", pixels["d"], lossless=True)
    save(root / "e.jpg", pixels["e"], quality=95)
    save(root / "f.webp", pixels["f"], quality=95)
    save(root / "g.gif", pixels["g"].mean(-1).astype(np.uint8))
    loaded = load(root, size=12, resize="none")
    names = ["a.png", "b.bmp", "c.tif", "d.webp", "e.jpg", "f.webp", "g.gif"]
    assert loaded.paths == [f"{root}/{name}" for name in names]
    assert loaded.images.shape == (7, 12, 12, 3)
    assert loaded.rejected == []
    for i, name in enumerate("abcd"):
        np.testing.assert_array_equal(loaded.images[i], pixels[name])
    for i, name in [(4, "e"), (5, "f")]:  # lossy: close
        error = np.abs(loaded.images[i].astype(int) - pixels[name])
        assert error.mean() < 4
    gray = pixels["g"].mean(-1).astype(np.uint8)
    np.testing.assert_array_equal(loaded.images[6], np.repeat(gray[..., None], 3, -1))


def test_one_channel_folder_gives_pillows_luma(tmp_path, load):
    root = tmp_path / "flat"
    pixels = random_rgb(10, 10, seed=1)
    save(root / "colour.png", pixels)
    save(root / "gray.png", Image.fromarray(pixels[..., 0]))
    loaded = load(root, size=10, channels=1, resize="none")
    assert loaded.images.shape == (2, 10, 10, 1)
    np.testing.assert_array_equal(
        loaded.images[0, ..., 0], np.asarray(Image.fromarray(pixels).convert("L"))
    )
    np.testing.assert_array_equal(loaded.images[1, ..., 0], pixels[..., 0])


def test_exif_orientation_is_applied_when_loading_a_folder(tmp_path, load):
    root = tmp_path / "photos"
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide x 20 high
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    for name, orientation in [("a.png", 6), ("b.png", 8), ("c.png", 1)]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(root / name, stored, exif=exif)
    loaded = load(root, size=20, resize="none")
    rotated_cw, rotated_ccw, upright = loaded.images
    # Orientation 6: the viewer turns it clockwise, so the left (red) half is on top.
    assert (rotated_cw[:10, :, 0] == 255).all() and (rotated_cw[10:, :, 2] == 255).all()
    assert (rotated_ccw[:10, :, 2] == 255).all() and (rotated_ccw[10:, :, 0] == 255).all()
    assert (upright[:, :10, 0] == 255).all() and (upright[:, 10:, 2] == 255).all()


# --------------------------------------------------------------------------- resize


def test_size_defaults_to_the_image_size_argument(tmp_path, load):
    root = tmp_path / "flat"
    save(root / "a.png", random_rgb(30, 50))
    save(root / "b.png", random_rgb(9, 9))
    assert load(root, image_size=12).images.shape == (2, 12, 12, 3)
    assert load(root, image_size=12, size=6).images.shape == (2, 6, 6, 3)


@pytest.mark.parametrize("resize", ["shorter_side_crop", "stretch"])
@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_input_sizes_all_come_out_square(tmp_path, load, resize, channels):
    root = tmp_path / "mixed"
    shapes = [(6, 6), (20, 60), (45, 15), (33, 33), (7, 50)]
    for i, (height, width) in enumerate(shapes):
        save(root / f"{i}.png", random_rgb(height, width, seed=i))
    save(root / "5.png", Image.fromarray(random_rgb(13, 21)[..., 0]))  # grayscale
    loaded = load(root, size=16, channels=channels, resize=resize)
    assert loaded.images.shape == (6, 16, 16, channels)
    assert loaded.images.dtype == np.uint8
    assert loaded.rejected == []


def test_resize_modes_crop_or_keep_the_sides(tmp_path, load):
    root = tmp_path / "wide"
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:] = (255, 0, 0)
    wide[:, 10:30] = (0, 255, 0)  # the centre 20x20 square is green
    save(root / "wide.png", wide)
    cropped = load(root, size=10, resize="shorter_side_crop").images[0]
    stretched = load(root, size=10, resize="stretch").images[0]
    exact = load(root, size=20, resize="none").images[0]
    assert (cropped[:, 1:-1] == (0, 255, 0)).all()
    assert (cropped[..., 1] > cropped[..., 0]).all()  # no side column survives
    assert (stretched[:, 0] == (255, 0, 0)).all() and (stretched[:, -1] == (255, 0, 0)).all()
    assert (stretched[:, 4:6] == (0, 255, 0)).all()
    np.testing.assert_array_equal(exact, wide[:, 10:30])


def test_resize_none_rejects_a_too_small_image_with_a_reason(tmp_path, load):
    root = tmp_path / "flat"
    big = random_rgb(15, 17, seed=3)
    save(root / "big.png", big)
    save(root / "small.png", random_rgb(12, 9))
    loaded = load(root, size=10, resize="none")
    np.testing.assert_array_equal(loaded.images[0], big[2:12, 3:13])
    assert loaded.paths == [f"{root}/big.png"]
    [rejected] = loaded.rejected
    assert rejected["path"] == "small.png"
    assert "9x12" in rejected["reason"]
    assert "size 10" in rejected["reason"]
    assert "resize" in rejected["reason"]


# --------------------------------------------------------------------------- layout


def test_top_level_folders_are_classes_and_nested_images_belong_to_them(tmp_path, load):
    root = tmp_path / "labelled"
    save(root / "cat" / "a.png", solid(0))
    save(root / "cat" / "indoor" / "deep" / "b.png", solid(1))
    save(root / "dog" / "c.png", solid(2))
    save(root / "dog" / "puppies" / "d.png", solid(3))
    loaded = load(root)
    assert loaded.class_names == ["cat", "dog"]
    assert loaded.labelled
    assert loaded.paths == [
        f"{root}/cat/a.png",
        f"{root}/cat/indoor/deep/b.png",
        f"{root}/dog/c.png",
        f"{root}/dog/puppies/d.png",
    ]
    np.testing.assert_array_equal(loaded.labels, [0, 0, 1, 1])
    assert loaded.labels.dtype == np.int64
    for i in range(4):
        np.testing.assert_array_equal(loaded.images[i], solid(i))


def test_class_indices_follow_sorted_names_not_creation_order(tmp_path, load):
    first, second = tmp_path / "first", tmp_path / "second"
    for root, order in [
        (first, ["zebra", "apple", "mango"]),
        (second, ["mango", "zebra", "apple"]),
    ]:
        for name in order:
            for i in range(2):
                save(root / name / f"{i}.png", solid(len(name) + i))
    loads = [load(first), load(first), load(second)]
    for loaded in loads:
        assert loaded.class_names == ["apple", "mango", "zebra"]
        np.testing.assert_array_equal(loaded.labels, [0, 0, 1, 1, 2, 2])
        folders = [Path(path).parent.name for path in loaded.paths]
        assert [loaded.class_names[label] for label in loaded.labels] == folders
    np.testing.assert_array_equal(loads[0].images, loads[1].images)
    np.testing.assert_array_equal(loads[0].images, loads[2].images)


def test_flat_folder_is_unlabelled(tmp_path, load):
    root = tmp_path / "flat"
    for i in range(3):
        save(root / f"{i}.png", solid(i))
    loaded = load(root)
    assert loaded.class_names == []
    assert not loaded.labelled
    np.testing.assert_array_equal(loaded.labels, [-1, -1, -1])
    assert loaded.labels.dtype == np.int64


def test_labels_none_ignores_folders_and_keeps_nested_files(tmp_path, load):
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 2, "dog": 2})
    save(root / "dog" / "nested" / "x.png", solid(9))
    save(root / "top.png", solid(10))
    loaded = load(root, labels="none")
    assert loaded.class_names == []
    np.testing.assert_array_equal(loaded.labels, [-1] * 6)
    assert [Path(p).relative_to(root).as_posix() for p in loaded.paths] == [
        "cat/00.png",
        "cat/01.png",
        "dog/00.png",
        "dog/01.png",
        "dog/nested/x.png",
        "top.png",
    ]
    assert loaded.rejected == []


def test_labels_folders_on_a_flat_folder_raises(tmp_path, load):
    root = tmp_path / "flat"
    save(root / "a.png", solid(0))
    with pytest.raises(ValueError, match="labels: none") as error:
        load(root, labels="folders")
    assert str(root) in str(error.value)
    assert "no class sub-folders" in str(error.value)


def test_files_in_the_root_of_a_labelled_folder_are_rejected(tmp_path, load):
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 2, "dog": 2})
    save(root / "stray.png", solid(7))
    loaded = load(root)
    assert loaded.images.shape[0] == 4
    assert loaded.rejected == [
        {"path": "stray.png", "reason": "not inside a class folder (labels: folders)"}
    ]


def test_scan_folder_lists_files_and_classes_before_decoding(tmp_path):
    root = tmp_path / "labelled"
    make_labelled(root, {"b": 1, "a": 2})
    write_bytes(root / "a" / "broken.png", b"not decoded by the scan")
    scan = scan_folder(root, "auto")
    assert scan.files == ["a/00.png", "a/01.png", "a/broken.png", "b/00.png"]
    assert scan.classes == ["a", "a", "a", "b"]
    assert scan.class_names == ["a", "b"]
    assert scan.rejected == [] and scan.ignored == []


# --------------------------------------------------------------------------- bad files


def test_bad_files_are_rejected_with_reasons_and_hidden_files_ignored(tmp_path, load):
    root = tmp_path / "flat"
    good = {name: solid(i) for i, name in enumerate(["a.png", "c.jpg", "e.bmp", "g.tif"])}
    for name, pixels in good.items():
        save(root / name, pixels, **({"quality": 95} if name.endswith("jpg") else {}))
    png = save(tmp_path / "full.png", random_rgb(40, 40))
    jpeg = save(tmp_path / "full.jpg", random_rgb(40, 40), quality=90)
    write_bytes(root / "b_empty.png", b"")
    truncated_copy(png, root / "d_truncated.png")
    truncated_copy(jpeg, root / "f_truncated.jpg")
    write_bytes(root / "h_text.png", b"this is a text file\n")
    write_bytes(root / "i_noise.jpg", np.random.default_rng(0).bytes(300))
    write_bytes(root / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    save(root / ".thumbnails" / "t.png", solid(20))

    loaded = load(root)
    assert [Path(p).name for p in loaded.paths] == list(good)
    for i, pixels in enumerate(good.values()):
        np.testing.assert_allclose(loaded.images[i], pixels, atol=3)
    reasons = {entry["path"]: entry["reason"] for entry in loaded.rejected}
    assert [entry["path"] for entry in loaded.rejected] == [
        "b_empty.png",
        "d_truncated.png",
        "f_truncated.jpg",
        "h_text.png",
        "i_noise.jpg",
    ]
    assert reasons["b_empty.png"] == "empty file (0 bytes)"
    assert reasons["d_truncated.png"].startswith("truncated or corrupt")
    assert reasons["f_truncated.jpg"].startswith("truncated or corrupt")
    assert reasons["h_text.png"] == "not an image Pillow can read"
    assert reasons["i_noise.jpg"] == "not an image Pillow can read"
    assert sorted((e["path"], e["reason"]) for e in loaded.ignored) == [
        (".DS_Store", "hidden file"),
        (".thumbnails", "hidden folder"),
    ]
    assert loaded.rejected_fraction == pytest.approx(5 / 9)


def test_hidden_folders_and_files_inside_classes_are_ignored(tmp_path, load):
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 1, "dog": 1})
    save(root / ".git" / "objects" / "x.png", solid(5))
    save(root / "cat" / ".hidden.png", solid(6))
    save(root / "dog" / ".cache" / "y.png", solid(7))
    loaded = load(root)
    assert loaded.class_names == ["cat", "dog"]  # a hidden folder is not a class
    assert loaded.paths == [f"{root}/cat/00.png", f"{root}/dog/00.png"]
    assert sorted((e["path"], e["reason"]) for e in loaded.ignored) == [
        (".git", "hidden folder"),
        ("cat/.hidden.png", "hidden file"),
        ("dog/.cache", "hidden folder"),
    ]
    assert loaded.rejected == []


# --------------------------------------------------------------------------- symlinks


def test_symlinks_are_never_followed_out_of_the_root(tmp_path, load):
    root, outside = tmp_path / "root", tmp_path / "outside"
    save(root / "cat" / "a.png", solid(0))
    save(root / "dog" / "b.png", solid(1))
    save(outside / "x.png", solid(2))
    save(outside / "more" / "y.png", solid(3))
    os.symlink(outside / "x.png", root / "cat" / "link_out.png")
    os.symlink(root / "cat" / "a.png", root / "dog" / "link_in.png")
    os.symlink("../cat/a.png", root / "dog" / "relative_in.png")
    os.symlink(outside / "more", root / "cat" / "linked_folder")
    os.symlink(root / "dog", root / "cat" / "linked_inside_folder")
    os.symlink(outside, root / "linked_class")

    loaded = load(root)
    assert loaded.class_names == ["cat", "dog"]  # a symlinked folder is not a class
    assert [Path(p).relative_to(root).as_posix() for p in loaded.paths] == [
        "cat/a.png",
        "dog/b.png",
        "dog/link_in.png",
        "dog/relative_in.png",
    ]
    np.testing.assert_array_equal(loaded.labels, [0, 1, 1, 1])
    np.testing.assert_array_equal(loaded.images[2], solid(0))
    reasons = {entry["path"]: entry["reason"] for entry in loaded.rejected}
    assert reasons == {
        "cat/link_out.png": "symlink leaving the source folder (not followed)",
        "cat/linked_folder": "symlinked folder (symlinks are not followed)",
        "cat/linked_inside_folder": "symlinked folder (symlinks are not followed)",
        "linked_class": "symlinked folder (symlinks are not followed)",
    }


# --------------------------------------------------------------------------- errors


def test_missing_folder_raises_naming_the_path(tmp_path, load):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="ingestion.options.path") as error:
        load(missing)
    assert str(missing) in str(error.value)


def test_a_file_instead_of_a_folder_raises(tmp_path, load):
    path = save(tmp_path / "a.png", solid(0))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load(path)


def test_empty_folder_raises(tmp_path, load):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(ValueError, match="holds no image files") as error:
        load(root)
    assert str(root) in str(error.value)
    assert "ingestion.options.path" in str(error.value)


def test_folder_of_only_hidden_files_raises(tmp_path, load):
    root = tmp_path / "hidden"
    write_bytes(root / ".DS_Store", b"x")
    with pytest.raises(ValueError, match="holds no image files"):
        load(root)


def test_folder_without_any_decodable_image_raises(tmp_path, load):
    root = tmp_path / "notes"
    write_bytes(root / "readme.txt", b"hello")
    write_bytes(root / "data.csv", b"a,b\n1,2\n")
    with pytest.raises(ValueError, match="none of the 2 files") as error:
        load(root)
    message = str(error.value)
    assert str(root) in message
    assert "data.csv: not an image Pillow can read" in message
    assert "readme.txt: not an image Pillow can read" in message


def test_single_class_folder_raises(tmp_path, load):
    root = tmp_path / "one"
    make_labelled(root, {"cats": 3})
    with pytest.raises(ValueError, match="single class folder 'cats'") as error:
        load(root)
    assert str(root) in str(error.value)
    assert "labels: none" in str(error.value)
    assert load(root, labels="none").images.shape[0] == 3


def test_empty_class_folder_raises(tmp_path, load):
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 2, "dog": 2})
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['empty'\]") as error:
        load(root)
    assert str(root) in str(error.value)
    assert "hold no files" in str(error.value)


def test_class_whose_only_image_is_corrupt_raises(tmp_path, load):
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 2, "dog": 2})
    write_bytes(root / "bird" / "only.png", b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"class folders \['bird'\]") as error:
        load(root)
    assert str(root) in str(error.value)
    assert "no image that could be decoded" in str(error.value)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"resize": "crop"}, "ingestion.options.resize"),
        ({"channels": 4}, "ingestion.options.channels"),
        ({"labels": "yes"}, "ingestion.options.labels"),
        ({"size": 0}, "ingestion.options.size"),
        ({"workers": 0}, "ingestion.options.workers"),
        ({"colour": True}, "ingestion.options.colour"),
    ],
)
def test_bad_options_raise_naming_the_option(tmp_path, load, options, named):
    root = tmp_path / "flat"
    save(root / "a.png", solid(0))
    with pytest.raises(ValueError, match=named):
        load(root, **options)


def test_unknown_source_name_raises():
    with pytest.raises(ValueError, match="image_folder"):
        load_source("image_folders", {}, 8)


# --------------------------------------------------------------------------- read-only


def test_source_folder_is_never_written(tmp_path, load, staging):
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 3, "dog": 3})
    save(root / "cat" / "nested" / "n.png", solid(9))
    write_bytes(root / "dog" / "broken.jpg", b"\xff\xd8\xff broken")
    write_bytes(root / ".DS_Store", b"x")
    before = snapshot(root)
    loaded = load(root)
    assert loaded.images.shape[0] == 7
    assert snapshot(root) == before
    del loaded
    gc.collect()
    assert snapshot(root) == before


def test_staging_file_is_unlinked_and_released(tmp_path, load, staging):
    root = tmp_path / "flat"
    for i in range(4):
        save(root / f"{i}.png", solid(i))
    loaded = load(root)
    assert list(staging.iterdir()) == []  # the scratch file has no name
    for i in range(4):  # yet its rows outlive the StagingArray that wrote them
        np.testing.assert_array_equal(loaded.images[i], solid(i))
    has_proc = Path("/proc/self/maps").is_file()
    if has_proc:
        held = open_files_under(staging)
        assert held and all(target.endswith("(deleted)") for target in held)
    del loaded
    gc.collect()
    assert list(staging.iterdir()) == []
    if has_proc:
        assert open_files_under(staging) == []


# --------------------------------------------------------------------------- workers


def test_one_and_two_workers_give_identical_results(tmp_path, load):
    root = tmp_path / "labelled"
    make_labelled(root, {"a": 5, "b": 4, "c": 3}, size=10)
    save(root / "b" / "wide.png", random_rgb(9, 30, seed=1))
    write_bytes(root / "a" / "bad.png", b"nope")
    write_bytes(root / "c" / "empty.jpg", b"")
    write_bytes(root / "top.png", b"")
    one = load(root, workers=1)
    two = load(root, workers=2)
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.labels, two.labels)
    assert one.paths == two.paths
    assert one.rejected == two.rejected
    assert one.ignored == two.ignored
    assert one.class_names == two.class_names == ["a", "b", "c"]
    assert [e["path"] for e in one.rejected] == ["a/bad.png", "c/empty.jpg", "top.png"]


# --------------------------------------------------------------------------- nodes


def ingestion(root: Path, staging: Path, **config) -> IngestionConfig:
    options = {"path": str(root), "workers": 1, "staging_dir": str(staging)}
    options.update(config.pop("options", {}))
    return IngestionConfig(source="image_folder", options=options, **config)


@pytest.fixture
def labelled_with_two_bad_files(tmp_path) -> Path:
    root = tmp_path / "labelled"
    make_labelled(root, {"cherry": 12, "apple": 12, "banana": 12})
    write_bytes(root / "apple" / "broken.png", b"\x89PNG\r\n\x1a\n")
    write_bytes(root / "cherry" / "empty.jpg", b"")
    write_bytes(root / "banana" / ".DS_Store", b"x")
    return root


def test_ingest_labelled_folder(labelled_with_two_bad_files, staging):
    root = labelled_with_two_bad_files
    images, samples, class_index, rejected = ingest_images(
        ingestion(root, staging), MASKING, seed=3
    )
    assert images.shape == (36, 16, 16, 3)
    assert list(samples.columns) == ["index", "label", "class_name", "split", "pretrain", "path"]
    np.testing.assert_array_equal(samples["index"], np.arange(36))
    assert class_index == {"apple": 0, "banana": 1, "cherry": 2}
    np.testing.assert_array_equal(samples["label"], np.repeat([0, 1, 2], 12))
    assert list(samples["class_name"]) == ["apple"] * 12 + ["banana"] * 12 + ["cherry"] * 12
    assert samples["path"].tolist()[:2] == [f"{root}/apple/00.png", f"{root}/apple/01.png"]
    expected_split = stratified_split(samples["label"].to_numpy(), 0.2, 0.2, 3)
    assert samples["split"].tolist() == expected_split.tolist()
    counts = pd.crosstab(samples["class_name"], samples["split"])
    assert (counts > 0).all().all() and set(counts.columns) == {"train", "val", "test"}
    assert samples["split"].value_counts().to_dict() == {"train": 21, "test": 8, "val": 7}
    np.testing.assert_array_equal(samples["pretrain"], samples["split"] == "train")

    [accounting] = rejected["sources"]
    assert accounting == {
        "key": "source",
        "source": "image_folder",
        "accepted": 36,
        "rejected": 2,
        "ignored": 1,
        "rejected_fraction": pytest.approx(2 / 38),
    }
    assert rejected["max_rejected_fraction"] == 0.01
    assert rejected["rejected"] == [
        {"path": "apple/broken.png", "reason": "not an image Pillow can read", "source": "source"},
        {"path": "cherry/empty.jpg", "reason": "empty file (0 bytes)", "source": "source"},
    ]
    assert rejected["ignored"] == [
        {"path": "banana/.DS_Store", "reason": "hidden file", "source": "source"}
    ]


def test_accept_ingestion_raises_above_the_rejected_fraction(labelled_with_two_bad_files, staging):
    config = ingestion(labelled_with_two_bad_files, staging)
    images, samples, class_index, rejected = ingest_images(config, MASKING, seed=0)
    with pytest.raises(ValueError, match="data/08_reporting/rejected_files.json") as error:
        accept_ingestion(images, samples, class_index, rejected, config)
    message = str(error.value)
    assert "rejected 2 of 38 files" in message
    assert "max_rejected_fraction=1.0%" in message
    assert "apple/broken.png" in message and "cherry/empty.jpg" in message


def test_accept_ingestion_passes_below_the_threshold(labelled_with_two_bad_files, staging):
    config = ingestion(labelled_with_two_bad_files, staging, max_rejected_fraction=0.1)
    images, samples, class_index, rejected = ingest_images(config, MASKING, seed=0)
    accepted = accept_ingestion(images, samples, class_index, rejected, config)
    assert all(a is b for a, b in zip(accepted, (images, samples, class_index), strict=True))


def test_report_dataset_of_a_labelled_folder(labelled_with_two_bad_files, staging):
    images, samples, _, rejected = ingest_images(
        ingestion(labelled_with_two_bad_files, staging), MASKING, seed=0
    )
    report = report_dataset(images, samples, rejected)
    assert report["num_images"] == 36
    assert report["image_shape"] == [16, 16, 3]
    assert report["dtype"] == "uint8"
    assert report["num_classes"] == 3
    assert report["num_pretraining_images"] == 21
    assert report["split_counts"] == {"train": 21, "val": 7, "test": 8, "pretrain": 0}
    assert sum(sum(c.values()) for c in report["class_counts"].values()) == 36
    assert report["files"] == [
        {"key": "source", "source": "image_folder", "accepted": 36, "rejected": 2, "ignored": 1}
    ]


def make_flat(root: Path, count: int, offset: int = 100) -> None:
    for i in range(count):
        save(root / f"{i:02d}.png", solid(offset + i, 20, 24))


def test_ingest_unlabelled_flat_folder_is_all_pretraining(tmp_path, staging):
    root = tmp_path / "flat"
    make_flat(root, 5)
    images, samples, class_index, rejected = ingest_images(
        ingestion(root, staging), MASKING, seed=0
    )
    assert images.shape == (5, 16, 16, 3)
    assert class_index == {}
    assert (samples["split"] == "pretrain").all()
    assert samples["pretrain"].all()
    assert (samples["label"] == -1).all()
    assert (samples["class_name"] == "").all()
    assert rejected["sources"][0]["accepted"] == 5
    assert rejected["rejected"] == []
    report = report_dataset(images, samples, rejected)
    assert report["num_pretraining_images"] == 5
    assert report["split_counts"]["pretrain"] == 5
    assert report["num_classes"] == 0


def test_eval_source_rows_follow_the_pretraining_source(tmp_path, staging, load):
    flat, labelled = tmp_path / "flat", tmp_path / "labelled"
    make_flat(flat, 7)
    write_bytes(flat / "junk.png", b"junk")
    make_labelled(labelled, {"b": 5, "a": 5}, size=12)
    options = {"workers": 1, "staging_dir": str(staging)}
    config = IngestionConfig(
        source="image_folder",
        options={"path": str(flat), **options},
        eval_source={"source": "image_folder", "options": {"path": str(labelled), **options}},
    )
    images, samples, class_index, rejected = ingest_images(config, MASKING, seed=1)

    assert isinstance(images, ConcatenatedImages)
    assert images.shape == (17, 16, 16, 3)
    rows = np.concatenate(list(images.chunks()))
    pretraining, evaluated = load(flat, image_size=16), load(labelled, image_size=16)
    np.testing.assert_array_equal(rows, np.concatenate([pretraining.images, evaluated.images]))

    np.testing.assert_array_equal(samples["index"], np.arange(17))
    head, tail = samples.iloc[:7], samples.iloc[7:]
    assert (head["split"] == "pretrain").all() and head["pretrain"].all()
    assert (head["label"] == -1).all()
    assert head["path"].tolist() == pretraining.paths
    assert set(tail["split"]) == {"train", "val", "test"}
    assert not tail["pretrain"].any()
    assert tail["path"].tolist() == evaluated.paths
    np.testing.assert_array_equal(tail["label"], [0] * 5 + [1] * 5)
    assert class_index == {"a": 0, "b": 1}
    assert [(s["key"], s["accepted"], s["rejected"]) for s in rejected["sources"]] == [
        ("source", 7, 1),
        ("eval_source", 10, 0),
    ]
    assert rejected["rejected"] == [
        {"path": "junk.png", "reason": "not an image Pillow can read", "source": "source"}
    ]
    report = report_dataset(images, samples, rejected)
    assert report["num_images"] == 17
    assert report["num_pretraining_images"] == 7


def test_unlabelled_eval_source_raises(tmp_path, staging):
    flat, other = tmp_path / "flat", tmp_path / "other"
    make_flat(flat, 3)
    make_flat(other, 3)
    options = {"workers": 1, "staging_dir": str(staging)}
    config = IngestionConfig(
        source="image_folder",
        options={"path": str(flat), **options},
        eval_source={"source": "image_folder", "options": {"path": str(other), **options}},
    )
    with pytest.raises(ValueError, match="eval_source.*no labels"):
        ingest_images(config, MASKING, seed=0)


def test_eval_source_errors_name_the_eval_source_options(tmp_path, staging):
    flat = tmp_path / "flat"
    make_flat(flat, 3)
    missing = tmp_path / "not_there"
    options = {"workers": 1, "staging_dir": str(staging)}
    config = IngestionConfig(
        source="image_folder",
        options={"path": str(flat), **options},
        eval_source={"source": "image_folder", "options": {"path": str(missing), **options}},
    )
    with pytest.raises(FileNotFoundError) as error:
        ingest_images(config, MASKING, seed=0)
    message = str(error.value)
    assert str(missing) in message
    assert "set ingestion.eval_source.options.path to the folder" in message
    assert "ingestion.options" not in message

    with pytest.raises(ValueError, match=r"takes no ingestion\.eval_source\.options"):
        load_source("digits", {"path": "x"}, 16, "eval_source.source")
    with pytest.raises(ValueError, match=r"takes no ingestion\.options"):
        load_source("digits", {"path": "x"}, 16)


def test_eval_source_with_other_channels_raises_naming_both(tmp_path, staging):
    flat, labelled = tmp_path / "flat", tmp_path / "labelled"
    make_flat(flat, 3)
    make_labelled(labelled, {"a": 3, "b": 3})
    options = {"workers": 1, "staging_dir": str(staging)}
    config = IngestionConfig(
        source="image_folder",
        options={"path": str(flat), "channels": 1, **options},
        eval_source={"source": "image_folder", "options": {"path": str(labelled), **options}},
    )
    with pytest.raises(ValueError, match="channels") as error:
        ingest_images(config, MASKING, seed=0)
    message = str(error.value)
    assert "ingestion.source" in message and "ingestion.eval_source" in message
    assert "(16, 16, 1)" in message and "(16, 16, 3)" in message


# --------------------------------------------------------------------------- .npy


def test_write_npy_of_concatenated_images_matches_np_save(tmp_path, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ROWS", 3)  # several chunks per part
    first = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)
    second = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "second.npy", second)
    mapped = np.load(tmp_path / "second.npy", mmap_mode="r")
    combined = ConcatenatedImages([first, mapped])
    expected = np.concatenate([first, second])
    assert combined.shape == expected.shape

    write_npy(tmp_path / "written.npy", combined)
    np.save(tmp_path / "reference.npy", expected)
    assert (tmp_path / "written.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()

    dataset = NumpyDataset(str(tmp_path / "dataset.npy"), mmap_mode="r")
    dataset.save(combined)
    loaded = dataset.load()
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, expected)
    assert (tmp_path / "dataset.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()


def test_write_npy_of_a_staging_view_matches_np_save(tmp_path, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ROWS", 2)
    rows = np.random.default_rng(2).integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)
    staged = StagingArray(8, (4, 4, 1), tmp_path / "scratch")
    for row in rows:
        staged.append(row)
    view = staged.view()
    assert view.shape == (5, 4, 4, 1)
    assert list((tmp_path / "scratch").iterdir()) == []
    write_npy(tmp_path / "view.npy", view)
    np.save(tmp_path / "reference.npy", rows)
    assert (tmp_path / "view.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()
    dataset = NumpyDataset(str(tmp_path / "dataset.npy"), mmap_mode="r")
    dataset.save(ConcatenatedImages([view, rows]))
    np.testing.assert_array_equal(dataset.load(), np.concatenate([rows, rows]))


def test_ingested_folder_round_trips_through_the_numpy_dataset(tmp_path, staging):
    flat, labelled = tmp_path / "flat", tmp_path / "labelled"
    make_flat(flat, 4)
    make_labelled(labelled, {"a": 5, "b": 5})
    options = {"workers": 1, "staging_dir": str(staging)}
    config = IngestionConfig(
        source="image_folder",
        options={"path": str(flat), **options},
        eval_source={"source": "image_folder", "options": {"path": str(labelled), **options}},
    )
    images, *_ = ingest_images(config, MASKING, seed=0)
    dataset = NumpyDataset(str(tmp_path / "images.npy"), mmap_mode="r")
    dataset.save(images)
    expected = np.concatenate(list(images.chunks()))
    np.testing.assert_array_equal(dataset.load(), expected)
    np.save(tmp_path / "reference.npy", expected)
    assert (tmp_path / "images.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()


def test_concatenating_images_of_different_shapes_raises():
    with pytest.raises(ValueError, match="cannot stack"):
        ConcatenatedImages([np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4, 1), np.uint8)])


def test_write_npy_refuses_rows_of_the_wrong_shape(tmp_path):
    class Lying:
        shape = (3, 2, 2, 1)
        dtype = np.dtype(np.uint8)

        def chunks(self):
            yield np.zeros((2, 2, 2, 1), np.uint8)

    with pytest.raises(ValueError, match="wrote 2 rows but the array declares 3"):
        write_npy(tmp_path / "short.npy", Lying())


def test_files_are_ordered_by_whole_path_not_by_walk_order(tmp_path, load):
    root = tmp_path / "set"
    save(root / "cat" / "z.png", solid(1))
    save(root / "cat" / "a" / "x.png", solid(2))
    save(root / "dog" / "0.png", solid(3))
    loaded = load(root)
    assert [Path(p).relative_to(root).as_posix() for p in loaded.paths] == [
        "cat/a/x.png",
        "cat/z.png",
        "dog/0.png",
    ]
    assert loaded.labels.tolist() == [0, 0, 1]


def test_empty_path_is_an_error_not_the_working_directory(tmp_path, monkeypatch):
    make_labelled(tmp_path / "cwd", {"cat": 2, "dog": 2})
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(ValueError, match="ingestion.options.path"):
        load_source("image_folder", {"path": "", "workers": 1}, 8)


def test_an_unusable_class_still_rewrites_rejected_files(tmp_path, staging, monkeypatch):
    """The error says "see the rejected files": the list must be this run's, not the
    previous run's."""
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 2, "dog": 2})
    write_bytes(root / "bird" / "only.png", b"\x89PNG\r\n\x1a\n broken")
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "data" / "08_reporting" / "rejected_files.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"rejected": [{"path": "from/an/earlier/run.png"}]}')
    with pytest.raises(ValueError, match=r"class folders \['bird'\]") as error:
        ingest_images(ingestion(root, staging), MASKING, seed=0)
    assert "bird/only.png" in str(error.value)
    written = json.loads(report.read_text())
    assert [entry["path"] for entry in written["rejected"]] == ["bird/only.png"]
    assert written["rejected"][0]["source"] == "source"
    assert written["sources"][0]["rejected"] == 1


def test_file_names_that_are_not_utf8_are_kept_as_escaped_text(tmp_path, staging):
    """Linux file names are bytes; one that is not UTF-8 is read, and written to
    samples.csv and rejected_files.json as text with \\xNN escapes."""
    root = tmp_path / "labelled"
    make_labelled(root, {"cat": 5, "dog": 5})
    odd_class = root / os.fsdecode(b"caf\xe9")
    save(odd_class / os.fsdecode(b"\xff\xfe.png"), solid(20))
    for i in range(4):
        save(odd_class / f"ok{i}.png", solid(21 + i))
    write_bytes(root / "cat" / os.fsdecode(b"broken\xe9.png"), b"not an image")
    config = ingestion(root, staging, max_rejected_fraction=0.5)
    _, samples, class_index, rejected = ingest_images(config, MASKING, seed=0)
    assert len(samples) == 15
    assert "caf\\xe9" in class_index
    assert f"{root.as_posix()}/caf\\xe9/\\xff\\xfe.png" in samples["path"].tolist()
    assert [e["path"] for e in rejected["rejected"]] == ["cat/broken\\xe9.png"]
    samples.to_csv(tmp_path / "samples.csv", index=False)  # what the catalog does
    json.dumps(rejected, ensure_ascii=False).encode("utf-8")
    json.dumps(class_index, ensure_ascii=False).encode("utf-8")
