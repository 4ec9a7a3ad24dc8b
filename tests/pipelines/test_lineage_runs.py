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

from selfsup import lineage
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
        for method in ("ijepa", "mae", "simclr", "lejepa")
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


def test_a_stopped_ingestion_leaves_the_previous_set_whole(tmp_path):
    """Too many rejected files stop ingestion before it replaces images.npy,
    samples.csv or class_index.json: the previous set stays usable."""
    project = make_project_copy(tmp_path)
    raw = project / "data" / "01_raw"
    make_folder(raw / "first", seed=0)
    make_folder(raw / "second", seed=1)
    (raw / "second" / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result, output = run(project, "data/01_raw/first", 0.05, "--pipelines", "ingestion")
    assert result.returncode == 0, output[-3000:]
    intermediate = project / "data" / "02_intermediate"
    kept = {p.name: p.read_bytes() for p in intermediate.iterdir() if p.is_file()}

    result, output = run(project, "data/01_raw/second", 0.01, "--pipelines", "ingestion")
    assert result.returncode != 0 and "rejected 1 of 31 files" in output
    assert {p.name: p.read_bytes() for p in intermediate.iterdir() if p.is_file()} == kept
    rejected = json.loads((project / "data" / "08_reporting" / "rejected_files.json").read_text())
    assert [entry["path"] for entry in rejected["rejected"]] == ["dark/broken.png"]

    result, output = run(project, "data/01_raw/first", 0.05, "--pipelines", "masking")
    assert result.returncode == 0, output[-3000:]


def test_files_of_two_runs_are_refused_before_any_node(tmp_path):
    """A run killed between two saves leaves the images of one ingestion beside the
    samples of another (same number of rows): the next run refuses them, naming both
    files and the command that makes them agree, and the command works."""
    project = make_project_copy(tmp_path)
    raw = project / "data" / "01_raw"
    make_folder(raw / "first", seed=0)
    make_folder(raw / "second", seed=1)
    data = project / "data"
    samples = data / "02_intermediate" / "samples.csv"
    result, output = run(project, "data/01_raw/first", 0.05, "--pipelines", "ingestion,masking")
    assert result.returncode == 0, output[-3000:]
    first = {path: path.read_bytes() for path in (samples, lineage.record_path(samples))}
    model_input = data / "05_model_input" / "images.npy"
    before = model_input.stat().st_mtime_ns
    result, output = run(project, "data/01_raw/second", 0.05, "--pipelines", "ingestion")
    assert result.returncode == 0, output[-3000:]
    for path, content in first.items():  # as if the second run died before these saves
        path.write_bytes(content)

    result, output = run(project, "data/01_raw/second", 0.05, "--pipelines", "masking")
    assert result.returncode != 0
    assert "MixedLineageError" in output
    assert "02_intermediate/images.npy and" in output and "02_intermediate/samples.csv" in output
    assert "different runs of the node ingest_images" in output
    assert "kedro run --from-nodes ingest_images" in output
    assert "Running node" not in output
    assert model_input.stat().st_mtime_ns == before

    result, output = run(project, "data/01_raw/second", 0.05, "--from-nodes", "ingest_images")
    assert result.returncode == 0, output[-3000:]
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
