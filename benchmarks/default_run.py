"""Time the default `kedro run` end to end and print what BENCHMARKS.md records.

Usage (from the repository root, in the project's environment):
    python benchmarks/default_run.py [--json PATH] [extra kedro run arguments]

Prints the machine, the wall time, where it went (each node's own time, largest first;
loading and saving datasets and Kedro's start-up are the rest) and the run's comparison
table (every method's accuracy, pretraining time and throughput); exits non-zero if the
run fails. The run is `kedro run` in a child process whose nodes are timed around
`Node.run`, so the time is what `kedro run` takes, plus nothing but the timer.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from kedro.framework.cli import main as kedro_main
from kedro.pipeline.node import Node

# Run as a script, this folder is on sys.path.
from machine import cpu_model, write_json

ROOT = Path(__file__).resolve().parents[1]
# Set in the child process: where it writes each node's time when it exits.
NODE_TIMES = "SELFSUP_BENCHMARK_NODE_TIMES"


def timed_kedro_run(arguments: list[str]) -> int:
    """`kedro run ARGUMENTS` in this process, each node's wall time written to the JSON
    file named by $SELFSUP_BENCHMARK_NODE_TIMES when the process exits."""
    times: list[dict] = []
    untimed_run = Node.run

    def timed_run(node: Node, inputs: dict | None = None) -> dict:
        start = time.perf_counter()
        outputs = untimed_run(node, inputs)
        times.append({"node": node.name, "seconds": time.perf_counter() - start})
        return outputs

    Node.run = timed_run
    atexit.register(lambda: write_json(Path(os.environ[NODE_TIMES]), {"nodes": times}))
    sys.argv = ["kedro", "run", *arguments]
    return kedro_main()


def node_table(nodes: list[dict], wall: float) -> str:
    """Each node's time and share of the wall time, largest first, and the rest."""
    lines = ["| node | seconds | share of the run |", "|---|---|---|"]
    for row in sorted(nodes, key=lambda row: -row["seconds"]):
        lines.append(
            f"| {row['node']} | {row['seconds']:.1f} | {100 * row['seconds'] / wall:.1f} % |"
        )
    rest = wall - sum(row["seconds"] for row in nodes)
    lines.append(
        f"| (start-up, loading and saving datasets) | {rest:.1f} | {100 * rest / wall:.1f} % |"
    )
    return "\n".join(lines)


def main() -> int:
    arguments = sys.argv[1:]
    json_path = None
    if arguments[:1] == ["--json"]:
        json_path, arguments = Path(arguments[1]), arguments[2:]
    with tempfile.TemporaryDirectory() as scratch:
        times_path = Path(scratch) / "node_times.json"
        env = {**os.environ, "DO_NOT_TRACK": "1", NODE_TIMES: str(times_path)}
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, __file__, "--timed-child", *arguments], cwd=ROOT, env=env, check=False
        )
        wall = time.perf_counter() - start
        if result.returncode:
            print(f"kedro run failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
        nodes = json.loads(times_path.read_text())["nodes"]
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {device}"
    print("\n## default kedro run")
    print(f"- date: {time.strftime('%Y-%m-%d')}")
    print(f"- machine: {machine}")
    print(f"- command: python benchmarks/default_run.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"- kedro run wall time: {wall:.0f} s")
    print()
    print(node_table(nodes, wall))
    print()
    print((ROOT / "data/08_reporting/comparison.md").read_text())
    if json_path is not None:
        write_json(json_path, {"machine": machine, "wall_s": wall, "nodes": nodes})
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--timed-child"]:
        raise SystemExit(timed_kedro_run(sys.argv[2:]))
    raise SystemExit(main())
