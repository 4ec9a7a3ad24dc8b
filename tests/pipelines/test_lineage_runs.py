"""Lineage across real `kedro run`s: a run that stops between its saves leaves files no
later run will mix (the images of one ingestion beside the samples of another, same
number of rows), and every file one node writes for another carries a record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import TINY_RUN
from tests.project import kedro, make_project_copy

pytestmark = pytest.mark.slow

CLASSES = ("dark", "mid", "light")
PER_CLASS = 10


def make_folder(root: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for level, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = np.clip(60 * level + 40 + rng.normal(0, 20, (12, 12)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def run(project: Path, folder: str, max_rejected: float, *args: str):
    small_batches = {
        method: {**TINY_RUN[method], "training": {**TINY_RUN[method]["training"], "batch_size": 8}}
        for method in ("ijepa", "mae", "simclr")
    }
    params = {
        **TINY_RUN,
        **small_batches,
        "ingestion": {
            "source": "image_folder",
            "options": {"path": folder, "workers": 1, "channels": 1},
            "max_rejected_fraction": max_rejected,
        },
        "masking": {**TINY_RUN["masking"], "image_size": 8, "patch_size": 2},
        "evaluation": {**TINY_RUN["evaluation"], "low_shot": {"shots": [1], "draws": 1}},
    }
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": params}}))
    result = kedro(project, "run", "--config", "run.yml", *args)
    return result, " ".join((result.stdout + result.stderr).split())


def test_a_stopped_ingestion_leaves_files_that_no_later_run_mixes(tmp_path):
    project = make_project_copy(tmp_path)
    raw = project / "data" / "01_raw"
    make_folder(raw / "first", seed=0)
    make_folder(raw / "second", seed=1)
    # One unreadable file of 31 in the second folder: over a 1 % limit, so the second
    # ingestion stops after it has replaced images.npy, before samples.csv.
    (raw / "second" / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    result, output = run(project, "data/01_raw/first", 0.05, "--pipelines", "ingestion,masking")
    assert result.returncode == 0, output[-3000:]
    data = project / "data"
    model_input = data / "05_model_input" / "images.npy"
    before = model_input.stat().st_mtime_ns

    result, output = run(project, "data/01_raw/second", 0.01, "--pipelines", "ingestion")
    assert result.returncode != 0 and "rejected 1 of 31 files" in output
    first_rows = len((data / "02_intermediate" / "samples.csv").read_text().splitlines())
    assert np.load(data / "02_intermediate" / "images.npy").shape[0] == first_rows - 1

    result, output = run(project, "data/01_raw/second", 0.05, "--pipelines", "masking")
    assert result.returncode != 0
    assert "MixedLineageError" in output
    assert "02_intermediate/images.npy and" in output and "02_intermediate/samples.csv" in output
    assert "different runs of the node ingest_images" in output
    assert "kedro run --from-nodes ingest_images" in output
    assert "Running node" not in output
    assert model_input.stat().st_mtime_ns == before

    # The fix the message names makes the set whole again.
    result, output = run(project, "data/01_raw/second", 0.05, "--from-nodes", "ingest_images")
    assert result.returncode == 0, output[-3000:]
    records = sorted(p.name for p in data.rglob("*.lineage.json"))
    assert "samples.csv.lineage.json" in records and "features.npy.lineage.json" in records
    features = json.loads((data / "04_feature" / "ijepa" / "features.npy.lineage.json").read_text())
    assert {"ingest_images", "resize_images", "ijepa.pretrain"} <= set(features["ancestry"])


def test_a_file_without_its_record_is_refused(tmp_path):
    project = make_project_copy(tmp_path)
    make_folder(project / "data" / "01_raw" / "first", seed=0)
    result, output = run(project, "data/01_raw/first", 0.05, "--pipelines", "ingestion")
    assert result.returncode == 0, output[-3000:]
    (project / "data" / "02_intermediate" / "samples.csv.lineage.json").unlink()
    result, output = run(project, "data/01_raw/first", 0.05, "--pipelines", "masking")
    assert result.returncode != 0
    assert "samples.csv has no lineage record" in output
    assert "kedro run --pipelines ingestion" in output
    assert "Running node" not in output
