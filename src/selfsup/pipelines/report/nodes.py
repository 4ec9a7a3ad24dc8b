"""Gather every feature set's metrics and compare the methods in one report."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from selfsup.comparison import comparison_frame, comparison_markdown
from selfsup.plots import plot_comparison


def collect_metrics(**metrics: dict) -> dict:
    """Every feature set's metrics in one JSON, keyed by name."""
    return metrics


def compare_methods(
    metrics: dict, **training_histories: pd.DataFrame
) -> tuple[pd.DataFrame, str, Figure]:
    """The comparison table (CSV and markdown) and its bar chart."""
    frame = comparison_frame(metrics, training_histories)
    return frame, comparison_markdown(frame), plot_comparison(frame)
