"""Figures written by the pipelines (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from selfsup.masks import MaskBatch  # noqa: E402

TARGET_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _bounds(indices: np.ndarray, grid: int) -> tuple[int, int, int, int]:
    rows, cols = np.divmod(indices, grid)
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


def plot_mask_preview(
    images: np.ndarray, masks: MaskBatch, grid: int, patch_size: int
) -> plt.Figure:
    """Each image twice: with its context patches (blue), and with its target blocks."""
    count = images.shape[0]
    fig, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6), squeeze=False)
    cmap = "gray" if images.shape[-1] == 1 else None
    for col in range(count):
        picture = images[col, ..., 0] if images.shape[-1] == 1 else images[col]
        context = np.zeros(grid * grid)
        context[masks.context_indices[col][masks.context_valid[col]]] = 1
        overlay = np.kron(context.reshape(grid, grid), np.ones((patch_size, patch_size)))
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(picture, cmap=cmap)
        top.imshow(np.ma.masked_equal(overlay, 0), cmap="Blues", alpha=0.45, vmin=0, vmax=1.3)
        bottom.imshow(picture, cmap=cmap)
        for block, indices in enumerate(masks.target_indices[col]):
            r0, c0, r1, c1 = _bounds(indices, grid)
            bottom.add_patch(
                Rectangle(
                    (c0 * patch_size - 0.5, r0 * patch_size - 0.5),
                    (c1 - c0) * patch_size,
                    (r1 - r0) * patch_size,
                    fill=False,
                    linewidth=2,
                    edgecolor=TARGET_COLOURS[block % len(TARGET_COLOURS)],
                )
            )
        kept = int(masks.context_valid[col].sum())
        top.set_title(f"context: {kept} patches", fontsize=8)
        bottom.set_title(f"{masks.target_indices.shape[1]} targets", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("I-JEPA multi-block masks (blue: context; boxes: target blocks)")
    fig.tight_layout()
    return fig


def plot_training_history(history: pd.DataFrame, title: str) -> plt.Figure:
    """Loss per step (with a moving average) and the learning-rate schedule."""
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
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
    fig.tight_layout()
    return fig
