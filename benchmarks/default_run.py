"""Time the default `kedro run` end to end and print what BENCHMARKS.md records.

Usage (from the repository root, in the project's environment):
    python benchmarks/default_run.py [--json PATH] [--baseline REV] [--fp32]
        [extra kedro run arguments]

Prints the machine, the wall time, where it went (each node's own time, largest first;
loading and saving datasets and Kedro's start-up are the rest) and the run's comparison
table (every method's accuracy, pretraining time and throughput); exits non-zero if the
run fails. The run is `kedro run` in a child process whose nodes are timed around
`Node.run`, so the time is what `kedro run` takes, plus nothing but the timer.

With --baseline (e.g. d0bb222), the same `kedro run` then runs the code of git revision
REV, one run after the other on the same machine: REV's whole tree in a temporary folder
(`git archive`, so without this checkout's data), with this environment and `PYTHONPATH`
set to that tree's `src`; the extra arguments go to both runs. Prints both wall times,
both node tables and the ratio of this checkout's time to REV's.

With --fp32, this checkout's run trains every method in float32
(`<method>.training.precision=fp32`), as `precision: auto` does on a CPU without native
bf16; the baseline runs as it is (d0bb222 trains in float32 everywhere on the CPU).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from kedro.framework.cli import main as kedro_main
from kedro.pipeline.node import Node

# Run as a script, this folder is on sys.path.
from machine import cpu_model, write_json
from revisions import export_tree

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


def fp32_arguments(arguments: list[str]) -> list[str]:
    """`arguments` with every method's `training.precision` set to fp32 (the methods of
    conf/base/parameters_pretraining.yml: the entries with a `training` block)."""
    if any(argument.split("=")[0] == "--params" for argument in arguments):
        raise SystemExit(
            "--fp32 sets kedro run's --params itself; put the other parameters in a "
            "configuration environment (--env) instead"
        )
    pretraining = yaml.safe_load((ROOT / "conf/base/parameters_pretraining.yml").read_text())
    methods = [
        name
        for name, block in pretraining.items()
        if not name.startswith("_") and isinstance(block, dict) and "training" in block
    ]
    return [*arguments, "--params", ",".join(f"{m}.training.precision=fp32" for m in methods)]


def timed_run(tree: Path, arguments: list[str]) -> tuple[float, list[dict]] | None:
    """`kedro run ARGUMENTS` of the project in `tree`, its code imported from `tree`'s
    `src`: the wall time and each node's time, or None if it failed."""
    with tempfile.TemporaryDirectory() as scratch:
        times_path = Path(scratch) / "node_times.json"
        env = {**os.environ, "DO_NOT_TRACK": "1", NODE_TIMES: str(times_path)}
        if tree != ROOT:
            env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), env.get("PYTHONPATH", "")])
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--timed-child", *arguments],
            cwd=tree,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - start
        if result.returncode:
            print(f"kedro run in {tree} failed with exit code {result.returncode}", file=sys.stderr)
            return None
        return wall, json.loads(times_path.read_text())["nodes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--baseline", help="git revision whose kedro run to time after this one")
    parser.add_argument(
        "--fp32",
        action="store_true",
        help="train this checkout's methods in float32 (a CPU without native bf16)",
    )
    args, arguments = parser.parse_known_args()
    started = time.time()
    current = timed_run(ROOT, fp32_arguments(arguments) if args.fp32 else arguments)
    if current is None:
        return 1
    wall, nodes = current
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
    comparison = ROOT / "data/08_reporting/comparison.md"
    if comparison.exists() and comparison.stat().st_mtime >= started:  # this run's report
        print(comparison.read_text())
    record = {"machine": machine, "wall_s": wall, "nodes": nodes}
    if args.baseline:
        with tempfile.TemporaryDirectory(prefix="default_run_") as scratch:
            baseline = timed_run(export_tree(args.baseline, Path(scratch)), arguments)
        if baseline is None:
            return 1
        baseline_wall, baseline_nodes = baseline
        print(f"\n## {args.baseline}, the same kedro run just after")
        print(f"- kedro run wall time: {baseline_wall:.0f} s")
        print()
        print(node_table(baseline_nodes, baseline_wall))
        print(
            f"\nThis checkout took {wall:.0f} s, {args.baseline} {baseline_wall:.0f} s: "
            f"{wall / baseline_wall:.3f} of its time ({baseline_wall / wall:.2f}x faster)."
        )
        record["baseline"] = {
            "revision": args.baseline,
            "wall_s": baseline_wall,
            "nodes": baseline_nodes,
        }
    if args.json is not None:
        write_json(args.json, record)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--timed-child"]:
        raise SystemExit(timed_kedro_run(sys.argv[2:]))
    raise SystemExit(main())
