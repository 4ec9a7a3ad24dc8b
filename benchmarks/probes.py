"""The probes of the default run's feature sets: the project's fits (Newton-CG, the C grid
from the smallest C up, each fit starting from the previous one's weights) against lbfgs
fitting every C from zero, side by side, with the metrics of both compared.

For each feature set under data/04_feature (what `kedro run` leaves there, or --features
DIR), `selfsup.evaluation.evaluate_features` runs with the project's parameters
(conf/base: evaluation, seed) and the samples table of data/02_intermediate, once with
the project's `select_c_and_score` and once with lbfgs from zero in its place (both
float64, one BLAS thread, to `evaluation.tol`), alternating over --rounds rounds; each
round's time is the whole `evaluate_features` (probes, low-shot draws, both kNNs).
Prints the processor, each set's median time in both ways and their ratio, the most
iterations any one fit took in each way, and whether every metric (accuracies, chosen C, low-shot means and spreads) is the same; exits 1 if
any differs.

Usage (repository root, project environment, after `kedro run`):
    python benchmarks/probes.py [--features data/04_feature] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from kedro.config import OmegaConfigLoader
from machine import cpu_model, write_json
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from selfsup import evaluation
from selfsup.config import EvaluationConfig

ROOT = Path(__file__).resolve().parents[1]
# The iterations of every fit of the set being timed, per way (appended from the probe
# threads; list.append is atomic).
ITERATIONS: dict[str, list[int]] = {"project": [], "lbfgs": []}


def lbfgs_from_zero(train, val, test, config: EvaluationConfig) -> dict:
    """Each C of the grid fitted from zero with lbfgs; the first best on val in grid order."""
    scores = {}
    for c in config.c_grid:
        model = LogisticRegression(C=c, max_iter=config.max_iter, tol=config.tol)
        with threadpool_limits(limits=1):
            model.fit(train[0].astype(np.float64), train[1])
        ITERATIONS["lbfgs"].append(int(model.n_iter_.max()))
        scores[c] = (model.score(*val), model.score(*test))
    best = max(config.c_grid, key=lambda c: (scores[c][0], -config.c_grid.index(c)))
    return {
        "test_accuracy": float(scores[best][1]),
        "val_accuracy": float(scores[best][0]),
        "C": float(best),
    }


def counting_fit_logistic(*args, **kwargs):
    """The project's `fit_logistic`, its iterations recorded."""
    model = PROJECT_FIT(*args, **kwargs)
    ITERATIONS["project"].append(int(model.n_iter_.max()))
    return model


PROJECT_FIT = evaluation.fit_logistic


def timed_metrics(features, labels, splits, config, seed) -> tuple[float, dict]:
    start = time.perf_counter()
    metrics = evaluation.evaluate_features(features, labels, splits, config, seed)
    return time.perf_counter() - start, metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=ROOT / "data" / "04_feature")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    params = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="local")[
        "parameters"
    ]
    config = EvaluationConfig.model_validate(params["evaluation"])
    samples = pd.read_csv(ROOT / "data" / "02_intermediate" / "samples.csv")
    labels, splits = samples["label"].to_numpy(), samples["split"].to_numpy()
    sets = sorted(p.parent.name for p in args.features.glob("*/features.npy"))
    if not sets:
        print(f"no */features.npy under {args.features}: run `kedro run` first", file=sys.stderr)
        return 2
    print(f"processor: {cpu_model()}; {args.rounds} rounds, each way alternating")
    print(
        "| features | dims | Newton-CG, warm starts (s) | lbfgs from zero (s) | ratio "
        "| most iterations (Newton-CG / lbfgs) | same metrics |"
    )
    print("|---|---|---|---|---|---|---|")
    project_select = evaluation.select_c_and_score
    evaluation.fit_logistic = counting_fit_logistic
    rows, all_same = [], True
    for name in sets:
        features = np.load(args.features / name / "features.npy")
        times = {"project": [], "lbfgs": []}
        for fits in ITERATIONS.values():
            fits.clear()
        results = {}
        for _ in range(args.rounds):
            for way, select in (("project", project_select), ("lbfgs", lbfgs_from_zero)):
                evaluation.select_c_and_score = select
                seconds, results[way] = timed_metrics(
                    features, labels, splits, config, params["seed"]
                )
                times[way].append(seconds)
        evaluation.select_c_and_score = project_select
        project, lbfgs = (statistics.median(times[w]) for w in ("project", "lbfgs"))
        same = results["project"] == results["lbfgs"]
        all_same &= same
        rows.append(
            {
                "features": name,
                "dims": int(features.shape[1]),
                "project_s": project,
                "lbfgs_s": lbfgs,
                "most_iterations": {way: max(fits) for way, fits in ITERATIONS.items()},
                "same_metrics": same,
            }
        )
        print(
            f"| {name} | {features.shape[1]} | {project:.2f} | {lbfgs:.2f} | "
            f"{project / lbfgs:.2f} | {max(ITERATIONS['project'])} / {max(ITERATIONS['lbfgs'])} | "
            f"{'yes' if same else 'NO'} |"
        )
    total_project = sum(r["project_s"] for r in rows)
    total_lbfgs = sum(r["lbfgs_s"] for r in rows)
    print(
        f"| all | | {total_project:.2f} | {total_lbfgs:.2f} | {total_project / total_lbfgs:.2f} | | |"
    )
    if args.json:
        write_json(args.json, {"processor": cpu_model(), "rounds": args.rounds, "sets": rows})
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
