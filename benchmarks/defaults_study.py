"""Compare one method's settings through the real pipelines, full evaluation protocol.

Each variant is `kedro run --pipelines pretraining,features,evaluation --namespaces
METHOD,random_init` with its parameters, in its own temporary copy of the project
(ingestion and masking run once first), so variants can run side by side; each uses one
thread. Prints one markdown row per variant with the method's and random init's test
accuracy (%) and the method's pretraining time.

Usage (repository root, project environment):
    python benchmarks/defaults_study.py [--jobs 2] [--pooling grid] METHOD [VARIANT ...]
METHOD is ijepa, mae or simclr; VARIANT names come from VARIANTS below (default: all of
that method's). A variant's overrides are nested parameters applied on top of conf/base.
`--pooling P` adds a row per variant: the same trained encoders (and random init) probed
with `features.pooling: P` (features and evaluation pipelines rerun, no retraining).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]

SEEDS = {"seed 1": {"seed": 1}, "seed 2": {"seed": 2}}


def with_seeds(variants: dict[str, dict], *names: str) -> dict[str, dict]:
    """Add "NAME, seed 1/2" for each named variant: training seed only, the split comes
    from the shared ingestion run (seed 42)."""
    extra = {
        f"{name}, {seed_name}": merge(variants[name], seed)
        for name in names
        for seed_name, seed in SEEDS.items()
    }
    return {**variants, **extra}


def merge(base: dict, overrides: dict) -> dict:
    merged = json.loads(json.dumps(base))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def training(method: str, **values: object) -> dict:
    return {method: {"training": values}}


def hyperparameters(method: str, **values: object) -> dict:
    return {method: {"hyperparameters": values}}


def ijepa_schedule(epochs: int, ema_start: float, ema_end: float = 1.0) -> dict:
    return merge(
        training("ijepa", epochs=epochs),
        hyperparameters("ijepa", ema_momentum=[ema_start, ema_end]),
    )


def augmentations(**values: object) -> dict:
    return {"simclr": {"hyperparameters": {"augmentations": values}}}


# MAE's official initialization for every method's networks and the random baseline; the
# default since 2026-11-24, so "xavier init" now equals "default". Rows in BENCHMARKS.md
# dated before ran with std-0.02 linears: add {"encoder": {"weight_init": "trunc_normal"}}
# to a variant to repeat them.
XAVIER = {"encoder": {"weight_init": "xavier"}}

# method -> variant name -> runtime parameter overrides (nested), applied on top of conf/base.
VARIANTS: dict[str, dict[str, dict]] = {
    "ijepa": with_seeds(
        {
            "default": {},
            "paper (EMA 0.996, no crop)": merge(
                hyperparameters("ijepa", ema_momentum=[0.996, 1.0]),
                training("ijepa", crop_scale=None),
            ),
            "EMA 0.996 + crop": hyperparameters("ijepa", ema_momentum=[0.996, 1.0]),
            "EMA 0.999, no crop": training("ijepa", crop_scale=None),
            "EMA 0.9995 + crop": hyperparameters("ijepa", ema_momentum=[0.9995, 1.0]),
            "10 epochs": training("ijepa", epochs=10, warmup_epochs=1),
            "40 epochs": training("ijepa", epochs=40),
            "encoder 192x6": {"encoder": {"embed_dim": 192, "depth": 6, "num_heads": 3}},
            "bf16 autocast": training("ijepa", precision="bf16"),
            "xavier init": XAVIER,
            "100 epochs, EMA 0.996": ijepa_schedule(epochs=100, ema_start=0.996),
            "300 epochs, EMA 0.996": ijepa_schedule(epochs=300, ema_start=0.996),
            # The default for part of 2026-11-24 (300 epochs would take the default
            # `kedro run` past issue 3's 20 minutes on 2 CPU cores).
            "150 epochs, EMA 0.996": ijepa_schedule(epochs=150, ema_start=0.996),
            # The default until 2026-11-24.
            "20 epochs, EMA 0.999": ijepa_schedule(epochs=20, ema_start=0.999),
            # The 300-epoch run's EMA path over its first 150 epochs (0.996 -> 0.998),
            # and no ramp at all: does a target encoder that keeps moving to the end
            # learn more in 150 epochs than one frozen by momentum 1.0?
            "150 epochs, EMA 0.996 -> 0.998": ijepa_schedule(150, 0.996, ema_end=0.998),
            "150 epochs, EMA 0.996 constant": ijepa_schedule(150, 0.996, ema_end=0.996),
            # The default since the end of 2026-11-24 (equal to "default" from then on).
            "180 epochs, EMA 0.996 constant": ijepa_schedule(180, 0.996, ema_end=0.996),
        },
        "default",
        "xavier init",
        "100 epochs, EMA 0.996",
        "300 epochs, EMA 0.996",
        "150 epochs, EMA 0.996",
        "150 epochs, EMA 0.996 -> 0.998",
        "150 epochs, EMA 0.996 constant",
        "180 epochs, EMA 0.996 constant",
    ),
    "mae": with_seeds(
        {
            "default": {},
            "lr 1e-3": training("mae", lr=0.001, start_lr=0.0001),
            "no crop": training("mae", crop_scale=None),
            "no crop, lr 1e-3": training("mae", crop_scale=None, lr=0.001, start_lr=0.0001),
            "decoder 64x2": hyperparameters("mae", decoder={"embed_dim": 64, "depth": 2}),
            "decoder 128x8": hyperparameters("mae", decoder={"depth": 8}),
            "pixel targets (no norm-pix)": hyperparameters("mae", norm_pix_loss=False),
            "mask ratio 0.5": hyperparameters("mae", mask_ratio=0.5),
            "bf16 autocast": training("mae", precision="bf16"),
            "xavier init": XAVIER,
            "100 epochs": training("mae", epochs=100),
            "300 epochs": training("mae", epochs=300),
            # I-JEPA's default length: the methods compared at equal training.
            "180 epochs": training("mae", epochs=180),
        },
        "default",
        "lr 1e-3",
        "xavier init",
        "100 epochs",
        "300 epochs",
        "180 epochs",
    ),
    "simclr": with_seeds(
        {
            "default": {},
            "paper crops and flips ([0.08, 1], p 0.5)": augmentations(
                crop_scale=[0.08, 1.0], horizontal_flip_p=0.5
            ),
            "crop [0.08, 1]": augmentations(crop_scale=[0.08, 1.0]),
            "flip p 0.5": augmentations(horizontal_flip_p=0.5),
            "temperature 0.5": hyperparameters("simclr", temperature=0.5),
            "temperature 0.1": hyperparameters("simclr", temperature=0.1),
            "lr 1e-3": training("simclr", lr=0.001, start_lr=0.0001),
            "crop [0.2, 1]": augmentations(crop_scale=[0.2, 1.0]),
            "crop [0.2, 1], lr 1e-3": merge(
                augmentations(crop_scale=[0.2, 1.0]),
                training("simclr", lr=0.001, start_lr=0.0001),
            ),
            "bf16 autocast": training("simclr", precision="bf16"),
            "xavier init": XAVIER,
            "100 epochs": training("simclr", epochs=100),
            "300 epochs": training("simclr", epochs=300),
            # I-JEPA's default length: the methods compared at equal training.
            "180 epochs": training("simclr", epochs=180),
        },
        "default",
        "lr 1e-3",
        "xavier init",
        "100 epochs",
        "300 epochs",
        "180 epochs",
    ),
}


def project_copy(base: Path, name: str, data_from: Path | None) -> Path:
    """The project without its data; `data/` is `data_from`, or the empty layer folders."""
    target = base / "".join(c if c.isalnum() else "_" for c in name)
    skip_top = {".venv", ".git", "data", "build"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == ROOT
        return [n for n in names if (top and n in skip_top) or n == "__pycache__"]

    shutil.copytree(ROOT, target, ignore=ignore)
    if data_from is None:
        files_only = lambda folder, names: [n for n in names if (Path(folder) / n).is_file()]  # noqa: E731
        shutil.copytree(ROOT / "data", target / "data", ignore=files_only)
    else:
        shutil.copytree(data_from, target / "data")
    return target


def prepared_project(base: Path) -> Path:
    """A project copy under `base` whose ingestion and masking have run (seed 42), for
    the variants to copy their data from."""
    prep = project_copy(base, "prepare", data_from=None)
    run_kedro(prep, ["--pipelines", "ingestion,masking"], {})
    return prep


def run_kedro(cwd: Path, args: list[str], params: dict) -> None:
    env = {**os.environ, "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    config = cwd / "study_run.yml"
    config.write_text(yaml.safe_dump({"run": {"params": params}}))
    log = cwd / "study_run.log"
    with log.open("w") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "kedro", "run", *args, "--config", str(config)],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode:
        raise RuntimeError(f"kedro run failed in {cwd}; see {log}")


def row(name: str, method: str, metrics: dict, seconds: float) -> str:
    cells = [name]
    for key in (method, "random_init"):
        m = metrics[key]
        cells += [
            f"{100 * m['linear_probe']['test_accuracy']:.1f}",
            f"{100 * m['low_shot']['1']['mean']:.1f}",
            f"{100 * m['low_shot']['5']['mean']:.1f}",
            f"{100 * m['knn']['test_accuracy']:.1f}",
        ]
    cells.append(f"{seconds:.0f}")
    return "| " + " | ".join(cells) + " |"


def read_metrics(cwd: Path, method: str) -> dict:
    return {
        key: json.loads((cwd / f"data/07_model_output/{key}/metrics.json").read_text())
        for key in (method, "random_init")
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=sorted(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--pooling",
        choices=["last", "last4", "grid"],
        help="also probe each variant's encoders with this features.pooling (no retraining)",
    )
    parser.add_argument("only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    method = args.method
    unknown = [name for name in args.only if name not in VARIANTS[method]]
    if unknown:
        parser.error(f"unknown {method} variants {unknown}; choose from {list(VARIANTS[method])}")
    chosen = {k: v for k, v in VARIANTS[method].items() if not args.only or k in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        prep = prepared_project(base)

        def one(item: tuple[str, dict]) -> str:
            name, overrides = item
            cwd = project_copy(base, name, data_from=prep / "data")
            params = merge(training(method, num_threads=1), overrides)
            namespaces = f"{method},random_init"
            stages = "pretraining,features,evaluation"
            run_kedro(cwd, ["--pipelines", stages, "--namespaces", namespaces], params)
            history = pd.read_csv(cwd / f"data/07_model_output/{method}/training_history.csv")
            seconds = float(history["elapsed_s"].iloc[-1])
            rows = [row(name, method, read_metrics(cwd, method), seconds)]
            if args.pooling:
                # The same encoders read out again: features and probes only.
                read_out = merge(params, {"features": {"pooling": args.pooling}})
                run_kedro(
                    cwd,
                    ["--pipelines", "features,evaluation", "--namespaces", namespaces],
                    read_out,
                )
                label = f"{name}, pooling {args.pooling}"
                rows.append(row(label, method, read_metrics(cwd, method), seconds))
            return "\n".join(rows)

        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one, chosen.items()))
    print(
        f"| variant | {method} linear | 1-shot | 5-shot | kNN "
        "| random linear | 1-shot | 5-shot | kNN | pretraining (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
