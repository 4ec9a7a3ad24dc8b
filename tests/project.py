"""A throwaway copy of the project for whole `kedro` runs in a subprocess, shared by
the end-to-end, resume, torchrun and image-folder run tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_FOLDERS = (
    "01_raw",
    "02_intermediate",
    "03_primary",
    "04_feature",
    "05_model_input",
    "06_models",
    "07_model_output",
    "08_reporting",
)


def make_project_copy(dest: Path) -> Path:
    shutil.copytree(ROOT / "conf" / "base", dest / "conf" / "base")
    (dest / "conf" / "local").mkdir()
    shutil.copy2(ROOT / "conf" / "logging.yml", dest / "conf" / "logging.yml")
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    (dest / "src").mkdir()
    for folder in DATA_FOLDERS:
        (dest / "data" / folder).mkdir(parents=True)
    return dest


def kedro(project: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return _run_module(project, "kedro", args, timeout)


def selfsup(project: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The `selfsup` command (`selfsup embed ...`) run in the project copy."""
    return _run_module(project, "selfsup", args, timeout)


def _run_module(
    project: Path, module: str, args: tuple[str, ...], timeout: int
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # Wide enough that rich does not wrap the logged metrics table.
        "COLUMNS": "250",
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A TCP port nothing listens on now, for a process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
