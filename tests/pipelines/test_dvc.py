"""`dvc repro` on a temporary git copy of the repository, with a tiny configuration.

The copy holds every file git would (tracked or not ignored), with the tiny parameters
written into its conf/base (DVC reads parameters only from there), as one commit. The
tests then check what a user relies on: the first repro produces every method's metrics,
a second one runs nothing, and one method's parameter change reruns only that method's
stages and the report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_RUN

# Whole kedro / dvc / torchrun runs in subprocesses: the slow tier.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("ijepa", "mae", "simclr", "lejepa")
NAMES = (*METHODS, "raw_pixels", "random_init")
PARAMETER_FILES = {
    "ijepa": "parameters_pretraining.yml",
    "mae": "parameters_pretraining.yml",
    "simclr": "parameters_pretraining.yml",
    "lejepa": "parameters_pretraining.yml",
    "encoder": "parameters_pretraining.yml",
    "masking": "parameters_masking.yml",
    "evaluation": "parameters_evaluation.yml",
}
ENV = {
    **os.environ,
    # The stages call `kedro`: the one installed beside this interpreter.
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def deep_update(target: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def write_parameters(project: Path, overrides: dict) -> None:
    for key, value in overrides.items():
        path = project / "conf" / "base" / PARAMETER_FILES[key]
        parameters = yaml.safe_load(path.read_text())
        deep_update(parameters, {key: value})
        path.write_text(yaml.safe_dump(parameters, sort_keys=False))


def run(project: Path, *args: str, timeout: int = 600) -> str:
    result = subprocess.run(
        args, cwd=project, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-5000:]}"
    return output


def dvc(project: Path, *args: str) -> str:
    return run(project, sys.executable, "-m", "dvc", *args)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def git_visible_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [name for name in listed if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = tmp_path_factory.mktemp("dvc") / "project"
    for name in git_visible_files():
        # Code and configuration only: the repository's recorded results (dvc.lock,
        # metrics, plots) belong to its default configuration, not to the tiny one.
        if name == "dvc.lock" or (name.startswith("data/") and not name.endswith(".gitkeep")):
            continue
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    write_parameters(project, TINY_RUN)
    run(project, "git", "init", "-q")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-q", "-m", "tiny configuration")
    return project, dvc(project, "repro")


def test_first_repro_runs_every_stage_and_writes_every_method_metrics(repo):
    project, output = repo
    expected = {"ingest", "prepare_masks", "report"}
    expected |= {f"{stage}@{m}" for stage in ("pretrain", "features") for m in METHODS}
    expected |= {f"baseline_features@{name}" for name in ("raw_pixels", "random_init")}
    expected |= {f"evaluate@{name}" for name in NAMES}
    assert stages_run(output) == expected
    metrics = json.loads(dvc(project, "metrics", "show", "--json"))
    (workspace,) = metrics.values()
    report = workspace["data"]["data/08_reporting/metrics.json"]["data"]
    assert set(report) == set(NAMES)
    for name in NAMES:
        assert 0.0 <= report[name]["linear_probe"]["test_accuracy"] <= 1.0


def test_dvclive_curves_are_declared_plots(repo):
    project, _ = repo
    for method in METHODS:
        curve = project / f"data/08_reporting/{method}/dvclive/plots/metrics/train/loss.tsv"
        assert curve.is_file(), curve
    output = dvc(project, "plots", "show", "--json")
    for method in METHODS:
        assert f"data/08_reporting/{method}/dvclive/plots/metrics/train/loss.tsv" in output


def test_git_keeps_the_lock_file_and_the_metrics(repo):
    project, _ = repo
    ignored = subprocess.run(
        ["git", "check-ignore", "dvc.lock", "data/08_reporting/metrics.json"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout == "", f"hidden from git: {ignored.stdout}"


def test_second_repro_runs_nothing(repo):
    project, _ = repo
    assert stages_run(dvc(project, "repro")) == set()
    assert "up to date" in dvc(project, "status")


def lock_hashes(project: Path) -> dict[str, str]:
    """Every output's md5 in dvc.lock, by path."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def test_forced_rerun_reproduces_the_same_checkpoint_features_and_metrics(repo):
    project, _ = repo
    before = lock_hashes(project)
    metrics_before = (project / "data/07_model_output/simclr/metrics.json").read_text()
    output = dvc(project, "repro", "--force", "evaluate@simclr")
    assert {"ingest", "prepare_masks", "pretrain@simclr", "evaluate@simclr"} <= stages_run(output)
    after = lock_hashes(project)
    for path in (
        "data/06_models/simclr/encoder.pt",
        "data/04_feature/simclr/features.npy",
        "data/07_model_output/simclr/metrics.json",
    ):
        assert after[path] == before[path], path
    assert (project / "data/07_model_output/simclr/metrics.json").read_text() == metrics_before
    # The history records wall time, so the report (which shows it) is all that reruns.
    assert stages_run(dvc(project, "repro")) == {"report"}


def test_push_then_pull_into_a_fresh_clone_restores_checkpoints_without_training(repo, tmp_path):
    project, _ = repo
    run(project, "git", "add", "dvc.lock", "data")
    run(project, "git", "commit", "-q", "-m", "results")
    store = tmp_path / "store"
    dvc(project, "remote", "add", "--local", "-d", "store", str(store))
    dvc(project, "push")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "data/06_models/mae/encoder.pt").exists()
    dvc(clone, "remote", "add", "--local", "-d", "store", str(store))
    dvc(clone, "pull")
    for method in METHODS:
        path = f"data/06_models/{method}/encoder.pt"
        assert (clone / path).read_bytes() == (project / path).read_bytes()
    assert stages_run(dvc(clone, "repro")) == set()


def test_one_method_parameter_reruns_only_that_method_and_the_report(repo):
    project, _ = repo
    write_parameters(project, {"mae": {"training": {"lr": 0.0005}}})
    status = json.loads(dvc(project, "status", "--json"))
    assert set(status) == {"pretrain@mae"}
    output = dvc(project, "repro")
    assert stages_run(output) == {"pretrain@mae", "features@mae", "evaluate@mae", "report"}


def test_experiment_with_a_changed_parameter_is_listed(repo):
    project, _ = repo
    dvc(
        project,
        "exp",
        "run",
        "-n",
        "mae-lr-7e-4",
        "-S",
        "conf/base/parameters_pretraining.yml:mae.training.lr=0.0007",
    )
    shown = dvc(project, "exp", "show", "--json")
    assert "mae-lr-7e-4" in shown
    parameters = yaml.safe_load((project / "conf/base/parameters_pretraining.yml").read_text())
    assert parameters["mae"]["training"]["lr"] == 0.0007
