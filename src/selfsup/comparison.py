"""One table comparing every pretrained method with the baselines: accuracy and cost."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_SHOT_COLUMN = re.compile(r"^(\d+)_shot_mean$")


def shot_counts(frame: pd.DataFrame) -> list[str]:
    """The low-shot label counts present in a comparison frame, as strings, in order."""
    return [m.group(1) for c in frame if (m := _SHOT_COLUMN.match(c))]


def training_cost(history: pd.DataFrame) -> dict[str, float]:
    """Epochs, wall time of the training loop and its throughput, from its history."""
    elapsed = float(history["elapsed_s"].iloc[-1])
    images = float(history["images_seen"].iloc[-1])
    return {
        "epochs": int(history["epoch"].iloc[-1]) + 1,
        "steps": len(history),
        "pretraining_s": elapsed,
        "images_per_s": images / elapsed if elapsed > 0 else float("nan"),
    }


def final_loss(history: pd.DataFrame) -> float:
    """The training loss at the end: its mean over the last epoch's steps (one step's
    loss moves with its batch). Comparable between runs of one method, not across
    methods."""
    last_epoch = history["epoch"] == history["epoch"].iloc[-1]
    return float(history.loc[last_epoch, "loss"].mean())


def comparison_frame(metrics: dict[str, dict], histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per feature set, in the order of `metrics`; accuracies in percent.

    Feature sets with a training history are pretrained methods; the others are
    baselines and have no training cost. `vs_random_init_*` columns give each row's
    gain over the random-init baseline when it is present.
    """
    rows = []
    for name, m in metrics.items():
        row = {
            "features": name,
            "kind": "pretrained" if name in histories else "baseline",
            "linear_probe": 100 * m["linear_probe"]["test_accuracy"],
        }
        for shots, score in sorted(m["low_shot"].items(), key=lambda item: int(item[0])):
            row[f"{shots}_shot_mean"] = 100 * score["mean"]
            row[f"{shots}_shot_std"] = 100 * score["std"]
        row["knn"] = 100 * m["knn"]["test_accuracy"]
        weighted = m.get("knn_weighted", {}).get("test_accuracy", np.nan)
        row["knn_weighted"] = 100 * weighted
        cost = training_cost(histories[name]) if name in histories else {}
        for key in ("epochs", "steps", "pretraining_s", "images_per_s"):
            row[key] = cost.get(key, np.nan)
        row["final_loss"] = final_loss(histories[name]) if name in histories else np.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "random_init" in metrics:
        reference = frame.set_index("features").loc["random_init"]
        for column in ("linear_probe", "5_shot_mean"):
            if column in frame:
                frame[f"vs_random_init_{column}"] = frame[column] - reference[column]
    return frame


def _cell(value: float, fmt: str) -> str:
    return "–" if pd.isna(value) else format(value, fmt)


def comparison_markdown(frame: pd.DataFrame) -> str:
    """One markdown row per feature set: accuracies (mean ± std over low-shot draws),
    then the pretraining cost."""
    shots = shot_counts(frame)
    header = ["features", "linear probe", *[f"{k}-shot" for k in shots], "kNN", "weighted kNN"]
    header += ["epochs", "pretraining (s)", "images/s", "final loss"]
    lines = [
        "# Method comparison (test accuracy, %)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in frame.to_dict("records"):
        cells = [row["features"], f"{row['linear_probe']:.1f}"]
        cells += [f"{row[f'{k}_shot_mean']:.1f} ± {row[f'{k}_shot_std']:.1f}" for k in shots]
        cells += [
            f"{row['knn']:.1f}",
            _cell(row["knn_weighted"], ".1f"),
            _cell(row["epochs"], ".0f"),
            _cell(row["pretraining_s"], ".1f"),
            _cell(row["images_per_s"], ".0f"),
            _cell(row.get("final_loss", np.nan), ".4g"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    gains = [c for c in frame if c.startswith("vs_random_init_")]
    for row in frame[frame["kind"] == "pretrained"].to_dict("records"):
        if not gains:
            break
        verdict = "beats" if all(row[c] > 0 for c in gains) else "does NOT beat"
        details = ", ".join(
            f"{c.removeprefix('vs_random_init_').replace('_mean', '')} {row[c]:+.1f}" for c in gains
        )
        notes.append(f"- {row['features']} {verdict} random_init ({details} points).")
    pretrained = frame[frame["kind"] == "pretrained"]
    if pretrained["epochs"].nunique() > 1:
        epochs = ", ".join(
            f"{name} {count:.0f}"
            for name, count in zip(pretrained["features"], pretrained["epochs"], strict=True)
        )
        notes.append(
            f"- Warning: the methods trained for different numbers of epochs ({epochs}); "
            "a gap between them is not a like-for-like comparison."
        )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
