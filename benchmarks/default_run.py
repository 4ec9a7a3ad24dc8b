"""Time the default `kedro run` end to end and print what BENCHMARKS.md records.

Usage (from the repository root, in the project's environment):
    python benchmarks/default_run.py [extra kedro run arguments]

Prints the machine, the wall time and the run's comparison table (every method's
accuracy, pretraining time and throughput, and whether it beats random init); exits
non-zero if the run fails.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: Path, record: dict) -> None:
    """A benchmark's results as indented JSON (the --json option of the scripts here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def main() -> int:
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", *sys.argv[1:]], cwd=ROOT, env=env, check=False
    )
    wall = time.perf_counter() - start
    if result.returncode:
        print(f"kedro run failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print("\n## default kedro run")
    print(f"- date: {time.strftime('%Y-%m-%d')}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {device}")
    print(f"- command: python benchmarks/default_run.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"- kedro run wall time: {wall:.0f} s")
    print()
    print((ROOT / "data/08_reporting/comparison.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
