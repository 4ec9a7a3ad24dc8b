"""default_run.py --fp32: the arguments that make a run train every method in float32."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader
from omegaconf import OmegaConf

from selfsup.settings import CONFIG_LOADER_ARGS, PRETRAINED_NAMESPACES
from selfsup.training import TrainingConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def default_run(monkeypatch):
    # Run as a script, the benchmark imports its neighbours from its own folder.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("default_run")


def kedro_params(arguments: list[str]) -> dict:
    """What `kedro run`'s --params makes of the value after it (Kedro's own parsing:
    a dot list through OmegaConf)."""
    dot_list = arguments[arguments.index("--params") + 1].split(",")
    return OmegaConf.to_container(OmegaConf.from_dotlist(dot_list))


def test_fp32_arguments_make_every_pretrained_method_train_in_float32(default_run, tmp_path):
    arguments = default_run.fp32_arguments(["--pipelines", "ingestion"])
    assert arguments[:2] == ["--pipelines", "ingestion"]
    shutil.copytree(ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir()
    loader = OmegaConfigLoader(
        str(tmp_path / "conf"), runtime_params=kedro_params(arguments), **CONFIG_LOADER_ARGS
    )
    params = loader["parameters"]
    for method in PRETRAINED_NAMESPACES:
        training = TrainingConfig(**params[method]["training"])
        assert training.precision == "fp32", method
        # The rest of the block is the base file's.
        assert training.epochs == params[method]["training"]["epochs"] > 0


def test_fp32_with_params_of_its_own_is_refused_before_any_run(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "default_run.py"),
            "--fp32",
            "--params",
            "seed=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--fp32 sets kedro run's --params itself" in done.stderr
