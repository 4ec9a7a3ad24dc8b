"""default_run.py against a baseline revision: the same kedro run of both, one after the
other, each timed node by node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_RUN
from tests.project import make_project_copy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIRST_NODES = {"ingest_images", "check_rejected_files", "report_dataset", "resize_images"}


def git(project: Path, *args: str) -> None:
    identity = ["-c", "user.name=selfsup tests", "-c", "user.email=tests@selfsup.invalid"]
    subprocess.run(["git", *identity, *args], cwd=project, check=True, capture_output=True)


def test_a_run_against_a_baseline_revision_times_both_with_the_same_arguments(tmp_path):
    project = make_project_copy(tmp_path / "project")
    shutil.copytree(ROOT / "benchmarks", project / "benchmarks")
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": TINY_RUN}}))
    # git keeps no empty folder; the repository holds these with .gitkeep files too.
    for folder in [project / "src", project / "conf" / "local", *(project / "data").iterdir()]:
        (folder / ".gitkeep").touch()
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "baseline")
    record_path = tmp_path / "record.json"
    done = subprocess.run(
        [
            sys.executable,
            str(project / "benchmarks" / "default_run.py"),
            "--json",
            str(record_path),
            "--baseline",
            "HEAD",
            "--config",
            "run.yml",
            "--pipelines",
            "ingestion,masking",
        ],
        cwd=project,
        env={**os.environ, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(record_path.read_text())
    current = {row["node"] for row in record["nodes"]}
    baseline = {row["node"] for row in record["baseline"]["nodes"]}
    assert FIRST_NODES <= current and baseline == current
    assert not any(name.endswith(".pretrain") for name in current)  # --pipelines reached both
    assert record["baseline"]["revision"] == "HEAD"
    for run in (record, record["baseline"]):
        assert run["wall_s"] >= sum(row["seconds"] for row in run["nodes"]) > 0
    ratio = record["baseline"]["wall_s"] / record["wall_s"]
    assert f"of its time ({ratio:.2f}x faster)" in done.stdout
    # The baseline ran in a folder of its own: this project's data is the first run's only.
    assert (project / "data" / "05_model_input" / "images.npy").exists()
