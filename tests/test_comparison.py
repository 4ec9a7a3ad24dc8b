"""The method comparison: cost from histories, the table, its markdown and its chart."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from selfsup.comparison import comparison_frame, comparison_markdown, training_cost
from selfsup.pipelines.report.nodes import compare_methods
from selfsup.plots import plot_comparison


def metrics(
    linear: float, shots: dict[str, tuple[float, float]], knn: float, weighted: float
) -> dict:
    """Shaped like `selfsup.evaluation.evaluate_features`'s result (fractions)."""
    return {
        "linear_probe": {"test_accuracy": linear, "val_accuracy": linear, "C": 0.1},
        "low_shot": {k: {"mean": mean, "std": std} for k, (mean, std) in shots.items()},
        "knn": {"test_accuracy": knn},
        "knn_weighted": {"test_accuracy": weighted},
        "feature_dim": 32,
    }


def history(epochs: int, steps_per_epoch: int, batch_size: int, seconds_per_step: float):
    """Shaped like `selfsup.training.train`'s result."""
    steps = epochs * steps_per_epoch
    return pd.DataFrame(
        {
            "step": range(steps),
            "epoch": [s // steps_per_epoch for s in range(steps)],
            "loss": np.linspace(1.0, 0.5, steps),
            "lr": 1e-3,
            "weight_decay": 0.04,
            "images_seen": [(s + 1) * batch_size for s in range(steps)],
            "elapsed_s": [seconds_per_step * (s + 1) for s in range(steps)],
        }
    )


# ijepa beats random_init on both gains; simclr is better on 5-shot but worse on the
# linear probe. Low-shot keys are out of numeric order on purpose.
METRICS = {
    "ijepa": metrics(0.8, {"10": (0.6, 0.01), "1": (0.3, 0.05), "5": (0.5, 0.02)}, 0.7, 0.75),
    "simclr": metrics(0.6, {"10": (0.55, 0.0), "1": (0.2, 0.1), "5": (0.45, 0.03)}, 0.5, 0.52),
    "raw_pixels": metrics(0.5, {"10": (0.4, 0.0), "1": (0.15, 0.02), "5": (0.3, 0.0)}, 0.125, 0.15),
    "random_init": metrics(
        0.65, {"10": (0.5, 0.0), "1": (0.25, 0.05), "5": (0.4, 0.05)}, 0.55, 0.6
    ),
}
# ijepa: 2 epochs x 3 steps of 16 images in 3.0 s; simclr: 3 epochs x 2 steps of 8 in 4.0 s.
HISTORIES = {"ijepa": history(2, 3, 16, 0.5), "simclr": history(3, 2, 8, 2 / 3)}


WITHOUT_RANDOM_INIT = {k: v for k, v in METRICS.items() if k != "random_init"}
# Formatting is checked with and without the random_init gain columns: the gain column
# `vs_random_init_5_shot_mean` must not be mistaken for a shot count.


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return comparison_frame(METRICS, HISTORIES)


@pytest.fixture(scope="module")
def frame_without_gains() -> pd.DataFrame:
    """raw_pixels is the only baseline: no random_init, so no vs_random_init_* columns."""
    return comparison_frame(WITHOUT_RANDOM_INIT, HISTORIES)


def test_training_cost_from_the_last_history_row():
    cost = training_cost(HISTORIES["ijepa"])
    assert cost["epochs"] == 2
    assert cost["steps"] == 6
    assert cost["pretraining_s"] == pytest.approx(3.0)
    assert cost["images_per_s"] == pytest.approx(96 / 3.0)
    cost = training_cost(HISTORIES["simclr"])
    assert (cost["epochs"], cost["steps"]) == (3, 6)
    assert cost["pretraining_s"] == pytest.approx(4.0)
    assert cost["images_per_s"] == pytest.approx(48 / 4.0)


def test_training_cost_of_an_instant_run_has_no_throughput():
    cost = training_cost(history(1, 2, 4, 0.0))
    assert cost["pretraining_s"] == 0
    assert math.isnan(cost["images_per_s"])


def test_one_row_per_feature_set_in_input_order(frame):
    assert frame["features"].tolist() == list(METRICS)
    assert frame["kind"].tolist() == ["pretrained", "pretrained", "baseline", "baseline"]
    assert frame.columns.tolist()[:13] == [
        "features",
        "kind",
        "linear_probe",
        "1_shot_mean",
        "1_shot_std",
        "5_shot_mean",
        "5_shot_std",
        "10_shot_mean",
        "10_shot_std",
        "knn",
        "knn_weighted",
        "epochs",
        "steps",
    ]


def test_accuracies_are_in_percent(frame):
    rows = frame.set_index("features")
    for name, m in METRICS.items():
        row = rows.loc[name]
        assert row["linear_probe"] == pytest.approx(100 * m["linear_probe"]["test_accuracy"])
        assert row["knn"] == pytest.approx(100 * m["knn"]["test_accuracy"])
        assert row["knn_weighted"] == pytest.approx(100 * m["knn_weighted"]["test_accuracy"])
        for shots, score in m["low_shot"].items():
            assert row[f"{shots}_shot_mean"] == pytest.approx(100 * score["mean"])
            assert row[f"{shots}_shot_std"] == pytest.approx(100 * score["std"])


def test_pretrained_rows_carry_their_training_cost(frame):
    rows = frame.set_index("features")
    expected = {"ijepa": (2, 6, 3.0, 32.0), "simclr": (3, 6, 4.0, 12.0)}
    for name, (epochs, steps, seconds, throughput) in expected.items():
        row = rows.loc[name]
        assert row["epochs"] == epochs
        assert row["steps"] == steps
        assert row["pretraining_s"] == pytest.approx(seconds)
        assert row["images_per_s"] == pytest.approx(throughput)


def test_the_final_loss_is_the_mean_over_the_last_epoch(frame):
    rows = frame.set_index("features")
    # Losses fall linearly from 1.0 to 0.5 over 6 steps (0.1 per step): ijepa's last
    # epoch is steps 3-5 (0.7, 0.6, 0.5), simclr's steps 4-5 (0.6, 0.5).
    assert rows.loc["ijepa", "final_loss"] == pytest.approx(0.6)
    assert rows.loc["simclr", "final_loss"] == pytest.approx(0.55)


def test_baseline_rows_have_no_training_cost(frame):
    baselines = frame[frame["kind"] == "baseline"]
    assert baselines["features"].tolist() == ["raw_pixels", "random_init"]
    for column in ("epochs", "steps", "pretraining_s", "images_per_s", "final_loss"):
        assert baselines[column].isna().all(), column


def test_gains_over_random_init(frame):
    rows = frame.set_index("features")
    reference = METRICS["random_init"]
    for name, m in METRICS.items():
        linear = 100 * (
            m["linear_probe"]["test_accuracy"] - reference["linear_probe"]["test_accuracy"]
        )
        five = 100 * (m["low_shot"]["5"]["mean"] - reference["low_shot"]["5"]["mean"])
        assert rows.loc[name, "vs_random_init_linear_probe"] == pytest.approx(linear)
        assert rows.loc[name, "vs_random_init_5_shot_mean"] == pytest.approx(five)
    assert rows.loc["ijepa", "vs_random_init_linear_probe"] == pytest.approx(15.0)
    assert rows.loc["simclr", "vs_random_init_linear_probe"] == pytest.approx(-5.0)
    assert rows.loc["simclr", "vs_random_init_5_shot_mean"] == pytest.approx(5.0)
    assert rows.loc["random_init", "vs_random_init_linear_probe"] == 0


def test_no_gain_columns_without_random_init(frame_without_gains):
    assert frame_without_gains["features"].tolist() == list(WITHOUT_RANDOM_INIT)
    assert not [c for c in frame_without_gains if c.startswith("vs_random_init_")]


def test_no_five_shot_gain_without_five_shot_scores():
    only_one_shot = {
        name: {**m, "low_shot": {"1": m["low_shot"]["1"]}} for name, m in METRICS.items()
    }
    frame = comparison_frame(only_one_shot, HISTORIES)
    assert [c for c in frame if c.startswith("vs_random_init_")] == ["vs_random_init_linear_probe"]


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


HEADER = [
    "features",
    "linear probe",
    "1-shot",
    "5-shot",
    "10-shot",
    "kNN",
    "weighted kNN",
    "epochs",
    "pretraining (s)",
    "images/s",
    "final loss",
]
EXPECTED_CELLS = {
    "ijepa": [
        "ijepa",
        "80.0",
        "30.0 ± 5.0",
        "50.0 ± 2.0",
        "60.0 ± 1.0",
        "70.0",
        "75.0",
        "2",
        "3.0",
        "32",
        "0.6",
    ],
    "simclr": [
        "simclr",
        "60.0",
        "20.0 ± 10.0",
        "45.0 ± 3.0",
        "55.0 ± 0.0",
        "50.0",
        "52.0",
        "3",
        "4.0",
        "12",
        "0.55",
    ],
    "raw_pixels": [
        "raw_pixels",
        "50.0",
        "15.0 ± 2.0",
        "30.0 ± 0.0",
        "40.0 ± 0.0",
        "12.5",
        "15.0",
        "–",
        "–",
        "–",
        "–",
    ],
    "random_init": [
        "random_init",
        "65.0",
        "25.0 ± 5.0",
        "40.0 ± 5.0",
        "50.0 ± 0.0",
        "55.0",
        "60.0",
        "–",
        "–",
        "–",
        "–",
    ],
}
WARNING = (
    "- Warning: the methods trained for different numbers of epochs (ijepa 2, simclr 3); "
    "a gap between them is not a like-for-like comparison."
)


def check_table(markdown: str, names: list[str]) -> None:
    rows = table_rows(markdown)
    assert markdown.splitlines()[0] == "# Method comparison (test accuracy, %)"
    assert rows[0] == HEADER
    assert rows[1] == ["---"] * len(HEADER)
    assert rows[2:] == [EXPECTED_CELLS[name] for name in names]


def test_markdown_table_rows_and_cells(frame_without_gains):
    markdown = comparison_markdown(frame_without_gains)
    check_table(markdown, list(WITHOUT_RANDOM_INIT))
    # No random_init: no verdicts, but the epochs differ (2 vs 3): one warning.
    notes = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert notes == [WARNING]


def test_markdown_has_no_warning_when_epochs_agree():
    same = {"ijepa": HISTORIES["ijepa"], "simclr": history(2, 4, 8, 0.1)}
    markdown = comparison_markdown(comparison_frame(WITHOUT_RANDOM_INIT, same))
    assert "Warning" not in markdown
    assert "beat" not in markdown
    assert len(table_rows(markdown)) == 2 + len(WITHOUT_RANDOM_INIT)
    assert markdown.endswith("|\n")


def test_markdown_verdicts_use_the_gain_columns(frame):
    """Exercises the verdict logic on a frame whose only gain is the linear probe (the
    shape comparison_markdown can handle today)."""
    gains = frame.drop(columns=["vs_random_init_5_shot_mean"])
    lines = comparison_markdown(gains).splitlines()
    check_table("\n".join(lines), list(METRICS))
    notes = [line for line in lines if line.startswith("- ")]
    assert notes == [
        "- ijepa beats random_init (linear_probe +15.0 points).",
        "- simclr does NOT beat random_init (linear_probe -5.0 points).",
        WARNING,
    ]


def test_markdown_with_random_init_and_five_shot_gain(frame):
    markdown = comparison_markdown(frame)
    check_table(markdown, list(METRICS))
    notes = [line for line in markdown.splitlines() if line.startswith("- ")]
    # ijepa is better on both gains; simclr better on 5-shot but worse on the probe.
    assert notes == [
        "- ijepa beats random_init (linear_probe +15.0, 5_shot +10.0 points).",
        "- simclr does NOT beat random_init (linear_probe -5.0, 5_shot +5.0 points).",
        WARNING,
    ]


def bar_containers(fig: Figure) -> list[BarContainer]:
    (ax,) = fig.axes
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def check_chart(fig: Figure, frame: pd.DataFrame) -> None:
    assert isinstance(fig, Figure)
    containers = bar_containers(fig)
    labels = [c.get_label() for c in containers]
    assert labels == ["linear probe", "1-shot", "5-shot", "10-shot", "kNN", "weighted kNN"]
    columns = ["linear_probe", "1_shot_mean", "5_shot_mean", "10_shot_mean", "knn", "knn_weighted"]
    for container, column in zip(containers, columns, strict=True):
        assert len(container.patches) == len(frame)
        heights = [bar.get_height() for bar in container.patches]
        np.testing.assert_allclose(heights, frame[column])
    # Low-shot bars carry the std over draws; the others have no error bars.
    assert [c.errorbar is not None for c in containers] == [False, True, True, True, False, False]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == frame["features"].tolist()


@pytest.mark.parametrize("frame_fixture", ["frame_without_gains", "frame"])
def test_plot_comparison_has_one_bar_group_per_protocol(frame_fixture, request):
    # "frame" has random_init and five-shot gains; the other has neither.
    chart_frame = request.getfixturevalue(frame_fixture)
    fig = plot_comparison(chart_frame)
    try:
        check_chart(fig, chart_frame)
    finally:
        plt.close(fig)


def test_compare_methods_node_returns_table_markdown_and_chart():
    """The evaluation pipeline's node, with the default shots (1, 5, 10) and random_init."""
    table, markdown, fig = compare_methods(METRICS, **HISTORIES)
    try:
        pd.testing.assert_frame_equal(table, comparison_frame(METRICS, HISTORIES))
        assert markdown == comparison_markdown(table)
        check_chart(fig, table)
    finally:
        plt.close(fig)


def test_metrics_without_a_weighted_knn_show_a_dash():
    """metrics.json written before the weighted kNN existed still makes a table."""
    older = {
        name: {k: v for k, v in m.items() if k != "knn_weighted"} for name, m in METRICS.items()
    }
    frame = comparison_frame(older, HISTORIES)
    assert frame["knn_weighted"].isna().all()
    rows = table_rows(comparison_markdown(frame))
    assert [row[HEADER.index("weighted kNN")] for row in rows[2:]] == ["–"] * len(older)
