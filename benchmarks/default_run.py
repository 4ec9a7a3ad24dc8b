"""Time the default `kedro run` end to end and print what BENCHMARKS.md records.

Usage (from the repository root, in the project's environment):
    python benchmarks/default_run.py [extra kedro run arguments]

Prints the machine, the wall time, the I-JEPA pretraining time and the metrics table
of the run; exits non-zero if the run fails.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
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
    history = pd.read_csv(ROOT / "data/07_model_output/ijepa/training_history.csv")
    metrics = json.loads((ROOT / "data/08_reporting/metrics.json").read_text())
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print("\n## default kedro run")
    print(f"- date: {time.strftime('%Y-%m-%d')}")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {device}")
    print(f"- command: python benchmarks/default_run.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"- kedro run wall time: {wall:.0f} s")
    print(
        f"- I-JEPA pretraining: {len(history)} steps in {history['elapsed_s'].iloc[-1]:.0f} s, "
        f"final loss {history['loss'].iloc[-1]:.4f}"
    )
    print()
    print((ROOT / "data/08_reporting/metrics.md").read_text())
    ijepa, random_init = metrics["ijepa"], metrics["random_init"]
    for protocol, key in (("linear probe", None), ("5-shot", "5")):
        a = (
            ijepa["linear_probe"]["test_accuracy"]
            if key is None
            else ijepa["low_shot"][key]["mean"]
        )
        b = (
            random_init["linear_probe"]["test_accuracy"]
            if key is None
            else random_init["low_shot"][key]["mean"]
        )
        verdict = "beats" if a > b else "does NOT beat"
        print(f"- {protocol}: I-JEPA {100 * a:.1f} {verdict} random init {100 * b:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
