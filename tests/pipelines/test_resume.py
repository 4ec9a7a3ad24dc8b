"""Kill `kedro run` mid-epoch, rerun with `resume: true`: pretraining continues from the
last checkpoint and ends with exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import TINY_RUN, pretraining_run
from tests.project import kedro, make_project_copy

# Whole kedro / dvc / torchrun runs in subprocesses: the slow tier.
pytestmark = pytest.mark.slow

# 1,077 train images / batch 32 = 33 steps per epoch, 3 epochs = 99 steps.
TRAINING = {**TINY_RUN["ijepa"]["training"], "epochs": 3, "checkpoint_every": 5}


def write_params(project, resume: bool) -> None:
    ijepa = {**TINY_RUN["ijepa"], "training": {**TRAINING, "resume": resume}}
    params = {**TINY_RUN, "ijepa": ijepa}
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": params}}))


PRETRAIN_IJEPA = pretraining_run("ijepa")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project_copy(tmp_path_factory.mktemp("resume"))
    write_params(project, resume=False)
    result = kedro(project, "run", "--config", "run.yml", "--pipelines", "ingestion,masking")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return project


def test_killed_run_resumes_to_the_uninterrupted_weights(project):
    models = project / "data" / "06_models" / "ijepa"
    result = kedro(project, *PRETRAIN_IJEPA)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    reference = torch.load(models / "encoder.pt", weights_only=True)
    reference_history = pd.read_csv(project / "data/07_model_output/ijepa/training_history.csv")
    assert len(reference_history) == 99
    (models / "encoder.pt").unlink()
    checkpoints = models / "checkpoints"
    shutil.rmtree(checkpoints)  # the interrupted run's must be its own

    env = {**os.environ, "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kedro", *PRETRAIN_IJEPA],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("step-*.pt")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved = sorted(int(p.stem.removeprefix("step-")) for p in checkpoints.glob("step-*.pt"))
    assert saved and saved[-1] < 33, "killed in the first epoch, mid-epoch"
    assert not (models / "encoder.pt").exists()

    write_params(project, resume=True)
    result = kedro(project, *PRETRAIN_IJEPA)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f"resuming from data/06_models/ijepa/checkpoints/step-{saved[-1]:08d}.pt" in log
    resumed = torch.load(models / "encoder.pt", weights_only=True)
    assert resumed["config"] == reference["config"]
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], tensor), name
    history = pd.read_csv(project / "data/07_model_output/ijepa/training_history.csv")
    columns = [c for c in reference_history.columns if c != "elapsed_s"]
    pd.testing.assert_frame_equal(history[columns], reference_history[columns])
