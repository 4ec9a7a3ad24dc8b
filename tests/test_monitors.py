"""Representation monitors: RankMe, normalized std, the collapse rule and the kNN monitor."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from selfsup.checkpoints import TrainingCheckpoints
from selfsup.config import EvaluationConfig, MonitorConfig
from selfsup.data.preprocessing import NormalizedImages
from selfsup.evaluation import encoder_features, evaluate_features
from selfsup.monitors import (
    CollapseRule,
    RepresentationCollapseError,
    TrainingMonitor,
    build_monitor,
    normalized_std,
    rankme,
)
from selfsup.plots import plot_training_history
from selfsup.training import train
from tests.helpers import make_ijepa, tiny_training


def entropy_rank(features: np.ndarray) -> float:
    """RankMe written independently: numpy SVD of the centred features, p = s / sum(s),
    exp(-sum p log p)."""
    centred = features.astype(np.float64) - features.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_rankme_orders_and_values_features_of_known_rank():
    rng = np.random.default_rng(0)
    n, d = 2000, 16
    rank_one = np.outer(rng.standard_normal(n), rng.standard_normal(d))
    rank_four = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d))
    full = rng.standard_normal((n, d))
    values = [rankme(x) for x in (rank_one, rank_four, full)]
    assert values[0] == pytest.approx(1.0, abs=1e-3)
    assert 2.5 < values[1] < 4.0 + 1e-3
    assert d - 1 < values[2] <= d  # isotropic: nearly every direction counts
    assert values[0] < values[1] < values[2]
    for x, value in zip((rank_one, rank_four, full), values, strict=True):
        assert value == pytest.approx(entropy_rank(x), rel=1e-4)


def test_normalized_std_is_zero_for_identical_features_and_one_over_sqrt_d_when_spread():
    rng = np.random.default_rng(1)
    d = 64
    same = np.tile(rng.standard_normal(d), (500, 1))
    assert normalized_std(same) == pytest.approx(0.0, abs=1e-12)
    spread = rng.standard_normal((20000, d))
    assert normalized_std(spread) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert normalized_std(7.0 * spread) == pytest.approx(normalized_std(spread), rel=1e-9)


def test_normalized_std_sees_a_collapse_to_one_point_that_rankme_does_not():
    """One shared vector plus an image-dependent part 1000x smaller: RankMe (centred)
    still counts every direction; the std of the normalized features (SimSiam's,
    written out here with numpy) is about 1/1000 of the spread one."""
    rng = np.random.default_rng(6)
    n, d = 2000, 32
    point = np.tile(rng.standard_normal(d) * 10.0, (n, 1))
    collapsed = point + 0.01 * rng.standard_normal((n, d))
    unit = collapsed / np.linalg.norm(collapsed, axis=1, keepdims=True)
    assert normalized_std(collapsed) == pytest.approx(unit.std(axis=0, ddof=1).mean(), rel=1e-9)
    assert normalized_std(collapsed) < 1e-3 / math.sqrt(d) * 2
    assert rankme(collapsed) > d - 2
    rule = CollapseRule(rankme_fraction=0.03, std_fraction=0.01, patience=1)
    message = rule.check({"rankme": rankme(collapsed), "feature_std": normalized_std(collapsed)}, d)
    assert message is not None and message.startswith("normalized feature std")
    assert rule.check({"rankme": float(d), "feature_std": 1 / math.sqrt(d)}, d) is None


def test_rankme_ignores_a_shared_offset():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 32))
    assert rankme(features + 100.0 * rng.standard_normal(32)) == pytest.approx(
        rankme(features), rel=1e-6
    )
    assert rankme(np.ones((10, 4))) == pytest.approx(1.0, abs=0.01)  # nothing varies


def test_collapse_rule_needs_patience_checks_in_a_row():
    rule = CollapseRule(rankme_fraction=0.1, std_fraction=0.1, patience=3)
    healthy = {"rankme": 20.0, "feature_std": 0.1}
    low_rank = {"rankme": 1.0, "feature_std": 0.1}
    assert rule.check(low_rank, 64) is None
    assert rule.check(low_rank, 64) is None
    assert rule.check(healthy, 64) is None  # the streak resets
    assert rule.check(low_rank, 64) is None
    assert rule.check(low_rank, 64) is None
    message = rule.check(low_rank, 64)
    assert message is not None
    assert "RankMe 1.00 < 6.40" in message and "rankme_fraction=0.1" in message
    assert "3 checks in a row" in message
    low_std = CollapseRule(0.0, 0.5, 1).check({"rankme": 5.0, "feature_std": 0.01}, 64)
    assert "normalized feature std 0.0100 < 0.0625" in low_std


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(4))


def constant_encoder_ijepa():
    """Every image maps to the same features: the patch embedding sees nothing."""
    method = make_ijepa()
    for encoder in (method.context_encoder, method.target_encoder):
        torch.nn.init.zeros_(encoder.patch_embed.proj.weight)
        torch.nn.init.zeros_(encoder.patch_embed.proj.bias)
    method.context_encoder.patch_embed.requires_grad_(False)
    return method


def monitor(images, **collapse) -> TrainingMonitor:
    config = MonitorConfig(
        every_steps=1,
        knn_every_epochs=None,
        collapse={"rankme_fraction": 0.05, "std_fraction": 0.01, "patience": 2, **collapse},
    )
    return TrainingMonitor(config, images[:32], description="test")


def test_collapse_rule_warns_on_a_constant_encoder(images, caplog):
    with caplog.at_level(logging.WARNING, logger="selfsup.monitors"):
        history = train(
            constant_encoder_ijepa(), images, tiny_training(), seed=0, monitor=monitor(images)
        )
    assert (history["rankme"] < 1.01).all()
    assert (history["feature_std"] < 1e-6).all()
    warnings = [
        r.getMessage() for r in caplog.records if "representation collapse" in r.getMessage()
    ]
    assert warnings  # from the second check on
    assert warnings[0].startswith("test: representation collapse at step 1: RankMe")


def test_collapse_rule_stops_a_collapsed_run_when_asked(images):
    with pytest.raises(RepresentationCollapseError, match="at step 1: .*on_collapse=stop"):
        train(
            constant_encoder_ijepa(),
            images,
            tiny_training(),
            seed=0,
            monitor=monitor(images, on_collapse="stop"),
        )


def test_a_resumed_run_stops_for_collapse_at_the_same_step(images, tmp_path):
    """The rule's count of low checks comes back from the checkpoint's history: with
    patience 4 a collapsed run stops at step 3, resumed after step 2 or not."""
    checkpoints = TrainingCheckpoints(tmp_path, 2, 2, {"run": "collapse"})
    with pytest.raises(RepresentationCollapseError, match="at step 3: "):
        train(
            constant_encoder_ijepa(),
            images,
            tiny_training(),
            0,
            checkpoints=checkpoints,
            monitor=monitor(images, on_collapse="stop", patience=4),
        )
    assert [p.name for p in checkpoints.directory.glob("step-*.pt")] == ["step-00000002.pt"]
    with pytest.raises(RepresentationCollapseError, match="at step 3: .*4 checks in a row"):
        train(
            constant_encoder_ijepa(),
            images,
            tiny_training(resume=True),
            0,
            checkpoints=checkpoints,
            monitor=monitor(images, on_collapse="stop", patience=4),
        )


def test_collapse_rule_is_silent_on_a_healthy_encoder(images, caplog):
    with caplog.at_level(logging.WARNING, logger="selfsup.monitors"):
        history = train(make_ijepa(), images, tiny_training(), seed=0, monitor=monitor(images))
    assert not [r for r in caplog.records if "collapse" in r.getMessage()]
    assert (history["rankme"] > 0.05 * 32).all()
    assert history["prediction_cosine"].between(-1, 1).all()


def test_history_records_monitors_at_their_steps_and_epochs(images):
    """48 images / batch 16: 3 steps per epoch, 2 epochs; RankMe every 2 steps, kNN
    after every epoch, on 8 val images against 24 train images (3 classes)."""
    labels = np.arange(48) % 3
    config = MonitorConfig(every_steps=2, knn_every_epochs=1, knn_k=3)
    knn = TrainingMonitor(
        config, images[:16], (images[:24], labels[:24]), (images[24:32], labels[24:32])
    )
    history = train(make_ijepa(), images, tiny_training(), seed=0, monitor=knn)
    assert history["rankme"].notna().tolist() == [True, False, True, False, True, False]
    assert history["knn_val_accuracy"].notna().tolist() == [False, False, True] * 2
    assert history["knn_val_accuracy"].dropna().between(0, 100).all()
    figure = plot_training_history(history, "ijepa")
    rank_ax, knn_ax = figure.axes[2], figure.axes[3]
    assert len(rank_ax.lines[0].get_xdata()) == 3
    assert list(knn_ax.lines[0].get_xdata()) == [2, 5]


def test_monitors_compute_in_the_training_precision(images, monkeypatch):
    """A bf16 run's monitors see bf16 autocast (they cost a third there); an fp32 run's
    do not."""
    seen = []
    representation = TrainingMonitor.representation

    def recording(self, method, step):
        seen.append(torch.is_autocast_enabled("cpu"))
        return representation(self, method, step)

    monkeypatch.setattr(TrainingMonitor, "representation", recording)
    config = MonitorConfig(every_steps=3, knn_every_epochs=None)
    for precision in ("fp32", "bf16"):
        history = train(
            make_ijepa(),
            images,
            tiny_training(precision=precision),
            seed=0,
            monitor=TrainingMonitor(config, images[:16]),
        )
        assert np.isfinite(history["rankme"].dropna()).all()
    assert seen == [False, False, True, True]


def test_knn_monitor_equals_the_evaluation_pipelines_knn_on_the_same_features():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (90, 16, 16, 1), dtype=np.uint8)
    labels = np.arange(90) % 3
    splits = np.array(["train"] * 60 + ["val"] * 15 + ["test"] * 15)
    normalization = {"mean": [0.5], "std": [0.25]}
    method = make_ijepa()
    all_rows = NormalizedImages(pixels, normalization)
    features = encoder_features(method.target_encoder, all_rows)
    config = EvaluationConfig(c_grid=[1.0], low_shot={"shots": [1], "draws": 1}, knn_k=5)
    expected = evaluate_features(features, labels, splits, config, seed=0)["knn"]["test_accuracy"]

    def rows(name):
        return NormalizedImages(pixels, normalization, splits == name), labels[splits == name]

    knn = TrainingMonitor(
        MonitorConfig(knn_k=5), all_rows[:4], knn_train=rows("train"), knn_val=rows("test")
    )
    assert knn.knn_accuracy(method)["knn_val_accuracy"] == pytest.approx(100 * expected)


def test_build_monitor_holds_out_val_images_and_falls_back_without_them(caplog):
    pixels = np.random.default_rng(3).integers(0, 256, (30, 16, 16, 1), dtype=np.uint8)
    samples = pd.DataFrame(
        {
            "label": np.arange(30) % 3,
            "split": ["train"] * 20 + ["val"] * 5 + ["test"] * 5,
            "pretrain": [True] * 20 + [False] * 10,
        }
    )
    normalization = {"mean": [0.5], "std": [0.25]}
    config = MonitorConfig(held_out_images=4, knn_max_train_images=12)
    built = build_monitor(pixels, samples, normalization, config, 0, "m")
    val_images = NormalizedImages(pixels, normalization, samples["split"].eq("val").to_numpy())[:]
    assert built.held_out.shape == (4, 1, 16, 16)
    assert all(any(torch.equal(h, v) for v in val_images) for h in built.held_out)
    assert len(built.knn_train[1]) == 12 and len(built.knn_val[1]) == 5
    # kNN fits on train-split rows with their own labels and scores exactly the val rows.
    every_row = NormalizedImages(pixels, normalization)[:]

    def rows_of(batch):
        return [next(i for i in range(30) if torch.equal(image, every_row[i])) for image in batch]

    train_rows = rows_of(built.knn_train[0][:])
    assert len(set(train_rows)) == 12
    assert set(train_rows) <= set(range(20))
    assert built.knn_train[1].tolist() == samples["label"].to_numpy()[train_rows].tolist()
    assert rows_of(built.knn_val[0][:]) == list(range(20, 25))
    assert built.knn_val[1].tolist() == samples["label"].to_numpy()[20:25].tolist()

    unlabelled = samples.assign(split="pretrain", pretrain=True, label=-1)
    with caplog.at_level(logging.WARNING, logger="selfsup.monitors"):
        fallback = build_monitor(pixels, unlabelled, normalization, config, 0, "m")
    assert fallback.knn_train is None and fallback.held_out.shape[0] == 4
    assert "no val-split images to hold out" in caplog.text
    off = MonitorConfig(every_steps=None, knn_every_epochs=None)
    assert build_monitor(pixels, samples, normalization, off, 0, "m") is None
