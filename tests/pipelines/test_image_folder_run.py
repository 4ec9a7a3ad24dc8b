"""`kedro run` end to end on generated image folders, with a tiny configuration.

A labelled folder of mixed formats, modes and sizes with one corrupt file; an
unlabelled folder pretrained on beside a labelled `eval_source`; and an unlabelled
folder alone, which must stop right after ingestion, before any training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.helpers import TINY_RUN
from tests.project import kedro, make_project_copy, selfsup

# Whole kedro runs in subprocesses: the slow tier.
pytestmark = pytest.mark.slow

CLASSES = ("circles", "stripes", "squares")
PER_CLASS = 12
FORMATS = ("png", "jpg", "bmp", "tiff", "webp")
MODES = ("RGB", "L", "RGBA", "P", "I;16", "CMYK")


def class_image(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (height, width) grayscale pattern that identifies the class, plus noise."""
    height, width = size
    y, x = np.mgrid[:height, :width]
    if kind == "circles":
        pattern = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(size) / 3) ** 2
    elif kind == "stripes":
        pattern = (x // 3) % 2 == 0
    else:
        pattern = (np.abs(x - width / 2) < width / 4) & (np.abs(y - height / 2) < height / 4)
    noisy = pattern * 180.0 + 40 + rng.normal(0, 10, size)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def save_in_mode(gray: np.ndarray, mode: str, path: Path) -> None:
    if mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path.with_suffix(".png"))
        return
    image = Image.fromarray(np.stack([gray, gray // 2, 255 - gray], axis=-1))
    if mode != "RGB":
        image = image.convert(mode)
    if mode in ("RGBA", "CMYK") and path.suffix in (".png", ".bmp", ".webp", ".gif"):
        path = path.with_suffix(".tiff")  # formats that store these modes
    if mode == "P" and path.suffix == ".jpg":
        path = path.with_suffix(".png")
    image.save(path)


def make_labelled_folder(root: Path, seed: int) -> Path:
    """Three classes, nested sub-folders, every format and mode, sizes 20..60 px."""
    rng = np.random.default_rng(seed)
    for c, kind in enumerate(CLASSES):
        for i in range(PER_CLASS):
            folder = root / kind / ("batch2" if i % 4 == 3 else "")
            folder.mkdir(parents=True, exist_ok=True)
            size = (int(rng.integers(20, 61)), int(rng.integers(20, 61)))
            extension = FORMATS[(i + c) % len(FORMATS)]
            save_in_mode(
                class_image(kind, size, rng), MODES[i % len(MODES)], folder / f"{i}.{extension}"
            )
    return root


def tree_fingerprint(root: Path) -> dict[str, tuple]:
    return {
        str(path.relative_to(root)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "",
        )
        for path in sorted(root.rglob("*"))
    }


def run_with(project: Path, ingestion: dict, *args: str):
    small_batches = {
        method: {**TINY_RUN[method], "training": {**TINY_RUN[method]["training"], "batch_size": 8}}
        for method in ("ijepa", "mae", "simclr", "lejepa")
    }
    params = {
        **TINY_RUN,
        **small_batches,
        "ingestion": ingestion,
        "masking": {**TINY_RUN["masking"], "image_size": 16, "patch_size": 2},
        # 12 images per class leave 7 train images: 10-shot draws are impossible.
        "evaluation": {**TINY_RUN["evaluation"], "low_shot": {"shots": [1, 5], "draws": 2}},
    }
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": params}}))
    return kedro(project, "run", "--config", "run.yml", *args)


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    project = make_project_copy(tmp_path_factory.mktemp("folder_project"))
    root = make_labelled_folder(project / "data" / "01_raw" / "shapes", seed=0)
    whole = sorted((root / "squares").glob("*.png"))[0].read_bytes()
    (root / "squares" / "broken.png").write_bytes(whole[: len(whole) // 2])
    before = tree_fingerprint(root)
    ingestion = {
        "source": "image_folder",
        "options": {"path": "data/01_raw/shapes", "workers": 2},
        "max_rejected_fraction": 0.05,
    }
    result = run_with(project, ingestion)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return project, root, before, result.stdout + result.stderr


def test_folder_run_ingests_every_valid_image(labelled_run):
    project, root, _, log = labelled_run
    data = project / "data"
    images = np.load(data / "02_intermediate" / "images.npy")
    assert images.shape == (len(CLASSES) * PER_CLASS, 16, 16, 3)
    samples = pd.read_csv(data / "02_intermediate" / "samples.csv")
    assert len(samples) == len(CLASSES) * PER_CLASS
    assert sorted(samples["class_name"].unique()) == sorted(CLASSES)
    # Class = top-level folder, also for the images in batch2/.
    for _, row in samples.iterrows():
        assert row["path"].split("/")[3] == row["class_name"]
    assert samples["path"].str.contains("/batch2/").sum() == len(CLASSES) * (PER_CLASS // 4)
    class_index = json.loads((data / "02_intermediate" / "class_index.json").read_text())
    assert class_index == {name: i for i, name in enumerate(sorted(CLASSES))}
    assert (samples["label"] == samples["class_name"].map(class_index)).all()
    assert set(samples["split"]) == {"train", "val", "test"}


def test_folder_run_lists_the_rejected_file_and_logs_the_count(labelled_run):
    project, _, _, log = labelled_run
    report = json.loads((project / "data" / "08_reporting" / "rejected_files.json").read_text())
    assert [entry["path"] for entry in report["rejected"]] == ["squares/broken.png"]
    assert "truncated or corrupt" in report["rejected"][0]["reason"]
    assert report["sources"][0]["rejected"] == 1
    assert report["sources"][0]["accepted"] == len(CLASSES) * PER_CLASS
    assert "1 files rejected" in log


def test_folder_run_probes_every_method_and_leaves_the_folder_untouched(labelled_run):
    project, root, before, _ = labelled_run
    metrics = json.loads((project / "data" / "08_reporting" / "metrics.json").read_text())
    assert set(metrics) == {"ijepa", "mae", "simclr", "lejepa", "raw_pixels", "random_init"}
    features = np.load(project / "data" / "04_feature" / "ijepa" / "features.npy")
    assert features.shape[0] == len(CLASSES) * PER_CLASS
    assert tree_fingerprint(root) == before
    assert not list((project / "data" / "02_intermediate").glob("staging-*"))


def test_embed_gives_the_runs_features_for_the_same_folder(labelled_run, tmp_path):
    """`selfsup embed` on the folder the run ingested: the same reader, size,
    normalization and read-out, so the same features for every image."""
    project, root, _, _ = labelled_run
    out = tmp_path / "shapes.npy"
    result = selfsup(
        project,
        "embed",
        "--encoder",
        "data/06_models/ijepa",
        "--images",
        "data/01_raw/shapes",
        "--out",
        str(out),
        "--batch-size",
        "5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"embedded {len(CLASSES) * PER_CLASS} images" in result.stderr
    samples = pd.read_csv(project / "data" / "02_intermediate" / "samples.csv")
    saved = np.load(project / "data" / "04_feature" / "ijepa" / "features.npy")
    by_path = dict(zip(samples["path"], saved, strict=True))
    paths = pd.read_csv(out.with_suffix(".csv"))["path"]
    assert sorted(paths) == sorted(samples["path"])
    np.testing.assert_allclose(np.load(out), np.stack([by_path[p] for p in paths]), atol=1e-5)
    rejected = pd.read_csv(out.with_suffix(".rejected.csv"))
    assert list(rejected["path"]) == ["squares/broken.png"]


def test_too_many_rejected_files_stop_the_run_after_writing_the_list(tmp_path):
    project = make_project_copy(tmp_path / "project")
    root = make_labelled_folder(project / "data" / "01_raw" / "shapes", seed=1)
    (root / "circles" / "empty.jpg").write_bytes(b"")
    result = run_with(
        project, {"source": "image_folder", "options": {"path": "data/01_raw/shapes"}}
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "max_rejected_fraction" in log and "rejected_files.json" in log
    report = json.loads((project / "data" / "08_reporting" / "rejected_files.json").read_text())
    assert report["rejected"][0]["path"] == "circles/empty.jpg"
    assert not (project / "data" / "06_models").exists() or not list(
        (project / "data" / "06_models").rglob("*.pt")
    )


def make_unlabelled_folder(root: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(count):
        kind = CLASSES[i % len(CLASSES)]
        Image.fromarray(class_image(kind, (24, 32), rng)).save(root / f"img_{i:03d}.png")
    return root


def test_unlabelled_folder_pretrains_and_a_labelled_eval_source_is_probed(tmp_path):
    project = make_project_copy(tmp_path / "project")
    make_unlabelled_folder(project / "data" / "01_raw" / "pool", 40, seed=2)
    make_labelled_folder(project / "data" / "01_raw" / "shapes", seed=3)
    ingestion = {
        "source": "image_folder",
        "options": {"path": "data/01_raw/pool", "workers": 1},
        "eval_source": {
            "source": "image_folder",
            "options": {"path": "data/01_raw/shapes", "workers": 1},
        },
    }
    result = run_with(project, ingestion)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    data = project / "data"
    samples = pd.read_csv(data / "02_intermediate" / "samples.csv")
    assert samples["pretrain"].tolist() == [True] * 40 + [False] * len(CLASSES) * PER_CLASS
    assert (samples["split"][:40] == "pretrain").all()
    assert (samples["label"][:40] == -1).all()
    history = pd.read_csv(data / "07_model_output" / "ijepa" / "training_history.csv")
    # Pretraining reads the 40 pool images only: 40 // 8 = 5 steps in the one epoch.
    assert len(history) == 5
    features = np.load(data / "04_feature" / "raw_pixels" / "features.npy")
    assert features.shape == (len(CLASSES) * PER_CLASS, 16 * 16 * 3)
    metrics = json.loads((data / "08_reporting" / "metrics.json").read_text())
    assert set(metrics) == {"ijepa", "mae", "simclr", "lejepa", "raw_pixels", "random_init"}


def test_unlabelled_folder_alone_stops_before_training(tmp_path):
    project = make_project_copy(tmp_path / "project")
    make_unlabelled_folder(project / "data" / "01_raw" / "pool", 40, seed=4)
    ingestion = {"source": "image_folder", "options": {"path": "data/01_raw/pool"}}
    result = run_with(project, ingestion)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "eval_source" in log and "--pipelines ingestion,masking,pretraining" in log
    assert not list((project / "data" / "06_models").rglob("*.pt"))
    # Stopped before its results were saved: no images, samples or class index.
    assert not list((project / "data" / "02_intermediate").glob("*.*"))
    # Pretraining alone is what an unlabelled folder is for.
    result = run_with(project, ingestion, "--pipelines", "ingestion,masking,pretraining")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert (project / "data" / "06_models" / "ijepa" / "encoder.pt").is_file()
