"""The GPU check's CPU dry run: every section runs and writes what the GPU run will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["ijepa", "mae", "simclr", "lejepa"]


def run_on_cpu(out: Path, *options: str) -> None:
    """gpu_check.py on the CPU with `options`, its files in `out`; fails the test when
    the script fails."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            *options,
            "--out",
            str(out),
            "--reference",
            str(out / "missing.json"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    run_on_cpu(
        out,
        *("--steps", "2", "--warmup", "1", "--compile-warmup", "1", "--flop-steps", "1"),
        *("--default-batch", "16"),
    )
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.txt").read_text()


@pytest.mark.slow
def test_steps_are_timed_and_counted_for_every_method_and_size(dry_run):
    record, _ = dry_run
    assert record["device"] == "cpu"
    assert record["matmul"]["best"] > 0
    eager = {(r["size"], r["method"]) for r in record["steps"] if not r["compiled"]}
    assert eager == {(size, m) for size in ("vit_b16", "default") for m in METHODS}
    for row in record["steps"]:
        assert row["images_per_s"] > 0
        assert row["flops_per_step"] > 0
        assert len(row["step_times_s"]) == 2
        expected_batch = 2 if row["size"] == "vit_b16" else 16
        assert row["batch_size"] == expected_batch
    compiled = {(r["size"], r["method"]) for r in record["steps"] if r["compiled"]}
    assert compiled == {("default", m) for m in METHODS}
    assert record["skipped"] == []


@pytest.mark.slow
def test_digits_experiment_trains_every_method_and_probes_it(dry_run):
    record, _ = dry_run
    assert [row["method"] for row in record["digits"]] == METHODS
    pretraining = yaml.safe_load((ROOT / "conf/base/parameters_pretraining.yml").read_text())
    for row in record["digits"]:
        assert row["epochs"] == 1
        # the train split (60 % of 1,797 digits) in full batches of the method's conf/base batch
        batch_size = pretraining[row["method"]]["training"]["batch_size"]
        assert row["batch_size"] == batch_size
        assert 1070 <= row["train_images"] <= 1085
        assert row["steps"] == row["train_images"] // batch_size
        assert row["pretrain_s"] > 0
        scores = [
            row["metrics"]["linear_probe"]["test_accuracy"],
            row["metrics"]["low_shot"]["5"]["mean"],
            row["metrics"]["knn"]["test_accuracy"],
        ]
        # 10 classes: chance is 0.1; even one epoch's features are far above it
        assert all(0.3 < score <= 1.0 for score in scores)


@pytest.mark.slow
def test_text_table_lists_every_row(dry_run):
    record, text = dry_run
    assert f"commit {record['commit']}" in text
    assert text.count("| vit_b16 |") == len(METHODS)
    assert text.count("| default |") == 2 * len(METHODS)  # eager and compiled
    for method in METHODS:
        assert f"| {method} | 1 |" in text


@pytest.mark.slow
def test_profile_records_the_timed_steps_only(tmp_path):
    """--profile leaves the model's set-up and the first steps out: the table counts
    exactly the 3 profiled steps."""
    run_on_cpu(
        tmp_path,
        *("--steps", "1", "--warmup", "0", "--flop-steps", "1", "--methods", "ijepa"),
        *("--vit-batches", "2", "--default-batch", "8", "--no-digits", "--no-compile"),
        *("--profile", "default", "ijepa"),
    )
    # The first table sums every operation over the profiled steps (the second splits
    # them by the Python lines that issued them).
    table = (tmp_path / "profile_default_ijepa.txt").read_text().split("\n\n")[0]
    step_rows = [line.split() for line in table.splitlines() if "ProfilerStep*" in line]
    assert step_rows and all(row[-1] == "3" for row in step_rows)
    # Each step runs AdamW once: 3 steps, 3 optimizer steps, none from set-up or warm-up.
    adamw_rows = [
        line.split() for line in table.splitlines() if "Optimizer.step#AdamW.step" in line
    ]
    assert adamw_rows and all(row[-1] == "3" for row in adamw_rows)
