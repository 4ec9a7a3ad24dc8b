"""`torchrun` with 2 CPU processes (gloo) around `kedro run --pipelines pretraining`:
the README's multi-GPU command, on CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import TINY_RUN, assert_same_weights, pretraining_run
from tests.project import free_port, kedro, make_project_copy

# Whole kedro / dvc / torchrun runs in subprocesses: the slow tier.
pytestmark = pytest.mark.slow

# 1,077 train images / global batch 32 = 33 steps; SimCLR gathers negatives across ranks.
PRETRAIN_SIMCLR = pretraining_run("simclr")
ENCODER = Path("data/06_models/simclr/encoder.pt")
HISTORY = Path("data/07_model_output/simclr/training_history.csv")


def torchrun(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "--no-python",
        str(Path(sys.executable).parent / "kedro"),
        *args,
    ]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project_copy(tmp_path_factory.mktemp("torchrun"))
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": TINY_RUN}}))
    result = kedro(project, "run", "--config", "run.yml", "--pipelines", "ingestion,masking")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return project


@pytest.fixture(scope="module")
def single_process(project):
    result = kedro(project, *PRETRAIN_SIMCLR)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    encoder = torch.load(project / ENCODER, weights_only=True)
    history = pd.read_csv(project / HISTORY)
    (project / ENCODER).unlink()
    (project / HISTORY).unlink()
    return encoder, history


def test_two_processes_write_once_the_encoder_of_one(project, single_process):
    result = torchrun(project, *PRETRAIN_SIMCLR)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    reference, reference_history = single_process
    encoder = torch.load(project / ENCODER, weights_only=True)
    history = pd.read_csv(project / HISTORY)
    assert len(history) == len(reference_history) == 33
    pd.testing.assert_series_equal(history["loss"], reference_history["loss"], rtol=1e-4)
    assert_same_weights(encoder["state_dict"], reference["state_dict"], atol=1e-4, rtol=1e-3)
    # Two processes trained; one (rank 0) logged.
    log = result.stdout + result.stderr
    assert log.count("simclr: 33 steps") == 1
    assert "images/s) on 2 x cpu" in log


def test_torchrun_refuses_a_run_beyond_pretraining(project):
    result = torchrun(project, "run", "--config", "run.yml", "--pipelines", "features")
    assert result.returncode != 0
    assert "under torchrun, run the pretraining pipeline alone" in result.stderr + result.stdout
