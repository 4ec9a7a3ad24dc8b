"""What logging the training curves with dvclive costs a run, as the pipeline logs them
against a dvclive sync after every step, side by side.

Logs --steps history rows shaped like I-JEPA's (loss, lr, weight decay, momentum every
step; the monitors' four columns every --monitor-every steps) into a fresh dvclive folder
twice: through the pretraining node's logger (`live_logger`, which syncs the summary and
DVC Studio every `LIVE_SYNC_EVERY_STEPS` steps) and with `Live.next_step()` after every
row. A dvclive sync re-reads every curve logged so far, so syncing every step costs in
proportion to the square of the steps. Prints the processor and both totals.

Usage (repository root, project environment):
    python benchmarks/live_logging.py [--steps 2880] [--monitor-every 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dvclive import Live
from machine import cpu_model

from selfsup.pipelines.pretraining.nodes import LIVE_SYNC_EVERY_STEPS, live_logger


def rows(steps: int, monitor_every: int) -> list[dict]:
    history = []
    for step in range(steps):
        row = {"step": step, "epoch": step // 16, "loss": 1.0 / (step + 1), "lr": 1e-3}
        row.update(weight_decay=0.04, momentum=0.996)
        if step % monitor_every == 0:
            row.update(rankme=10.0, feature_std=0.05, prediction_cosine=0.9)
        history.append(row)
    return history


def every_step_logger(live: Live) -> Callable[[dict], None]:
    def log(row: dict) -> None:
        for name, value in row.items():
            if name not in {"step", "epoch"}:
                live.log_metric(f"train/{name}", value)
        live.next_step()

    return log


def seconds(make_logger: Callable[[Live], Callable[[dict], None]], history: list[dict]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with Live(str(Path(folder) / "live"), dvcyaml=False, save_dvc_exp=False) as live:
            log = make_logger(live)
            for row in history:
                log(row)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2880, help="history rows to log")
    parser.add_argument("--monitor-every", type=int, default=40)
    args = parser.parse_args()
    history = rows(args.steps, args.monitor_every)
    print(f"processor: {cpu_model()}; {args.steps} rows, monitors every {args.monitor_every}")
    synced = seconds(live_logger, history)
    every_step = seconds(every_step_logger, history)
    print(f"pipeline logger (sync every {LIVE_SYNC_EVERY_STEPS} steps): {synced:.1f} s")
    print(f"sync every step: {every_step:.1f} s ({every_step / synced:.0f}x)")


if __name__ == "__main__":
    main()
