"""Figures written by the pipelines (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from selfsup.comparison import shot_counts  # noqa: E402
from selfsup.masks import MaskBatch  # noqa: E402

TARGET_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _patch_overlay(indices: np.ndarray, grid: int, patch_size: int) -> np.ndarray:
    """Pixel-resolution 0/1 map of the given patches."""
    patches = np.zeros(grid * grid)
    patches[indices] = 1
    return np.kron(patches.reshape(grid, grid), np.ones((patch_size, patch_size)))


def plot_mask_preview(
    images: np.ndarray,
    masks: MaskBatch,
    grid: int,
    patch_size: int,
    strategy: str = "multiblock",
) -> plt.Figure:
    """Each image twice: with its context patches (blue), and with its target patches
    (one colour per target; where targets overlap, the later one shows)."""
    count = images.shape[0]
    fig, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6), squeeze=False)
    cmap = "gray" if images.shape[-1] == 1 else None
    for col in range(count):
        picture = images[col, ..., 0] if images.shape[-1] == 1 else images[col]
        context = masks.context_indices[col][masks.context_valid[col]]
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(picture, cmap=cmap)
        top.imshow(
            np.ma.masked_equal(_patch_overlay(context, grid, patch_size), 0),
            cmap="Blues",
            alpha=0.45,
            vmin=0,
            vmax=1.3,
        )
        bottom.imshow(picture, cmap=cmap)
        for block, indices in enumerate(masks.target_indices[col]):
            colour = ListedColormap([TARGET_COLOURS[block % len(TARGET_COLOURS)]])
            overlay = _patch_overlay(indices, grid, patch_size)
            bottom.imshow(np.ma.masked_equal(overlay, 0), cmap=colour, alpha=0.5)
        top.set_title(f"context: {len(context)} patches", fontsize=8)
        bottom.set_title(f"{masks.target_indices.shape[1]} target(s)", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"I-JEPA {strategy} masks (top: context in blue; bottom: targets)")
    fig.tight_layout()
    return fig


def plot_examples(examples: dict[str, np.ndarray], title: str) -> plt.Figure:
    """One row per named picture set (uint8 (B, H, W, C)), one column per image."""
    names = list(examples)
    count = len(examples[names[0]])
    fig, axes = plt.subplots(
        len(names), count, figsize=(1.4 * count + 0.8, 1.5 * len(names) + 0.6), squeeze=False
    )
    for row, name in enumerate(names):
        for col in range(count):
            picture = examples[name][col]
            ax = axes[row, col]
            if picture.shape[-1] == 1:
                ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_history(history: pd.DataFrame, title: str) -> plt.Figure:
    """Loss per step (with a moving average), the schedules, and the representation
    monitors against steps: RankMe and the normalized feature std (with I-JEPA's
    prediction cosine), and the kNN accuracy on the val split. A loss can fall while
    the representation collapses; the monitors show it."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (loss_ax, lr_ax), (rank_ax, knn_ax) = axes
    loss_ax.plot(history["step"], history["loss"], alpha=0.35, label="loss per step")
    window = max(1, len(history) // 50)
    loss_ax.plot(
        history["step"],
        history["loss"].rolling(window, min_periods=1).mean(),
        label=f"moving average ({window} steps)",
    )
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(f"{title}: training loss")
    loss_ax.legend()
    lr_ax.plot(history["step"], history["lr"], label="learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    if "momentum" in history:
        ema_ax = lr_ax.twinx()
        ema_ax.plot(history["step"], history["momentum"], color="tab:green", label="EMA momentum")
        ema_ax.set_ylabel("EMA momentum")
    lr_ax.set_title("schedules")
    _plot_monitor(rank_ax, history, "rankme", "RankMe (held-out batch)", "tab:purple")
    if "rankme" in history:
        rank_ax.legend(loc="upper left")
    if "feature_std" in history:
        std_ax = rank_ax.twinx()
        _plot_monitor(std_ax, history, "feature_std", "normalized feature std", "tab:orange")
        if "prediction_cosine" in history:
            _plot_monitor(std_ax, history, "prediction_cosine", "prediction cosine", "tab:gray")
            std_ax.set_ylabel("normalized feature std, prediction cosine")
        std_ax.legend(loc="lower right")
    rank_ax.set_title("representation monitors")
    _plot_monitor(knn_ax, history, "knn_val_accuracy", "kNN accuracy, val split (%)", "tab:red")
    knn_ax.set_title("kNN accuracy during training")
    fig.tight_layout()
    return fig


def _plot_monitor(ax: plt.Axes, history: pd.DataFrame, column: str, label: str, color: str) -> None:
    ax.set_xlabel("step")
    if column not in history or history[column].isna().all():
        ax.text(
            0.5, 0.5, f"{label}: not monitored", ha="center", va="center", transform=ax.transAxes
        )
        return
    measured = history[["step", column]].dropna()
    ax.plot(measured["step"], measured[column], marker="o", markersize=3, color=color, label=label)
    ax.set_ylabel(label)


def plot_comparison(comparison: pd.DataFrame) -> plt.Figure:
    """Grouped bars: one group per feature set, one bar per protocol (low-shot bars
    carry the std over draws as error bars)."""
    shots = shot_counts(comparison)
    protocols = [("linear probe", "linear_probe", None)]
    protocols += [(f"{k}-shot", f"{k}_shot_mean", f"{k}_shot_std") for k in shots]
    protocols.append(("kNN", "knn", None))
    protocols.append(("weighted kNN", "knn_weighted", None))
    names = comparison["features"].tolist()
    positions = np.arange(len(names))
    width = 0.8 / len(protocols)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names)), 4.2))
    for offset, (label, column, spread) in enumerate(protocols):
        ax.bar(
            positions + (offset - (len(protocols) - 1) / 2) * width,
            comparison[column],
            width,
            yerr=None if spread is None else comparison[spread],
            capsize=2,
            label=label,
        )
    ax.set_xticks(positions, names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Frozen-feature evaluation per method and baseline", pad=28)
    # Above the axes: inside, the legend would hide the bars it explains.
    ax.legend(
        ncol=len(protocols),
        fontsize=8,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_feature_map(points: np.ndarray, classes: np.ndarray, title: str) -> plt.Figure:
    """A 2-D map of images (t-SNE of their features), one colour per class."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    names = sorted(set(classes.tolist()))
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for index, name in enumerate(names):
        chosen = classes == name
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=10,
            color=colours(index % colours.N),
            label=str(name),
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig
