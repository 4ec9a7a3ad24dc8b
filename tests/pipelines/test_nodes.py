"""Pipeline nodes called directly on small inputs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from dvclive import Live
from matplotlib.figure import Figure

from selfsup.config import (
    EncoderConfig,
    EvaluationConfig,
    FeatureConfig,
    IngestionConfig,
    MaskingConfig,
    PretrainingConfig,
)
from selfsup.data.preprocessing import to_model_input
from selfsup.evaluation import encoder_features
from selfsup.methods import build_method
from selfsup.pipelines.consistency import MixedRunsError
from selfsup.pipelines.evaluation.nodes import evaluate
from selfsup.pipelines.features.nodes import random_init_features, raw_pixel_features
from selfsup.pipelines.ingestion.nodes import ingest_images, report_dataset
from selfsup.pipelines.masking.nodes import (
    compute_normalization,
    describe_patch_grid,
    mask_preview,
    mask_statistics,
)
from selfsup.pipelines.pretraining.nodes import (
    LIVE_SYNC_EVERY_STEPS,
    _run_identity,
    live_logger,
    pretrain,
)

ENCODER = EncoderConfig(embed_dim=16, depth=1, num_heads=2)
MASKING = MaskingConfig(image_size=16, patch_size=2)


@pytest.fixture
def small_set():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    samples = pd.DataFrame(
        {
            "index": np.arange(12),
            "label": np.tile([0, 1, 2], 4),
            "class_name": [str(v) for v in np.tile([0, 1, 2], 4)],
            "split": ["train"] * 6 + ["val"] * 3 + ["test"] * 3,
            "pretrain": [True] * 6 + [False] * 6,
        }
    )
    return images, samples


def test_normalization_uses_the_train_split_only(small_set):
    images, samples = small_set
    images = images.copy()
    images[6:] = 255  # val/test images must not move the statistics
    stats = compute_normalization(images, samples)
    train = images[:6].astype(np.float64) / 255
    assert stats["mean"] == [pytest.approx(train.mean())]
    assert stats["std"] == [pytest.approx(train.std())]


def test_ingestion_node_reads_an_array_file_with_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    names = np.array(["cat", "dog"])[np.arange(40) % 2]
    path = tmp_path / "set.npz"
    np.savez(path, pixels=images, classes=names)
    config = IngestionConfig(
        source="arrays",
        options={"path": str(path), "images_key": "pixels", "labels_key": "classes"},
    )

    ingested, samples, class_index, rejected = ingest_images(config, MASKING, seed=0)

    np.testing.assert_array_equal(ingested, images)
    assert samples["class_name"].tolist() == names.tolist()
    assert samples["label"].tolist() == [int(n == "dog") for n in names]
    assert set(samples["split"]) == {"train", "val", "test"}
    assert samples["pretrain"].tolist() == (samples["split"] == "train").tolist()
    assert samples["path"].tolist() == [f"{path}[{i}]" for i in range(40)]
    assert class_index == {"cat": 0, "dog": 1}
    assert rejected["rejected"] == [] and rejected["sources"][0]["accepted"] == 40


def test_report_dataset_counts(small_set):
    images, samples = small_set
    accounting = {"key": "source", "source": "arrays", "accepted": 12, "rejected": 0}
    report = report_dataset(images, samples, {"sources": [{**accounting, "ignored": 0}]})
    assert report["num_images"] == 12
    assert report["image_shape"] == [16, 16, 1]
    assert report["num_classes"] == 3
    assert report["num_pretraining_images"] == 6
    assert report["split_counts"] == {"train": 6, "val": 3, "test": 3, "pretrain": 0}
    assert report["class_counts"]["0"] == {"train": 2, "val": 1, "test": 1}


def test_describe_patch_grid(small_set):
    images, _ = small_set
    grid = describe_patch_grid(images, MASKING)
    assert grid["grid"] == [8, 8]
    assert grid["num_patches"] == 64
    assert grid["patch_dim"] == 2 * 2 * 1


def test_random_init_baseline_is_the_untrained_pretraining_encoder(small_set):
    """The baseline has the exact weights pretraining starts from with the same seed."""
    images, samples = small_set
    normalization = compute_normalization(images, samples)
    features = FeatureConfig()
    baseline = random_init_features(
        images, samples, normalization, ENCODER, MASKING, features, seed=3
    )
    torch.manual_seed(3)
    method = build_method("ijepa", {}, ENCODER, MASKING, in_chans=1)
    expected = encoder_features(method.context_encoder, to_model_input(images, normalization))
    np.testing.assert_array_equal(baseline, expected)
    other = random_init_features(images, samples, normalization, ENCODER, MASKING, features, 4)
    assert not np.allclose(baseline, other)


def test_feature_nodes_use_the_configured_read_out(small_set):
    images, samples = small_set
    normalization = compute_normalization(images, samples)
    features = FeatureConfig(pooling="grid", grid_cells=2)
    baseline = random_init_features(
        images, samples, normalization, ENCODER, MASKING, features, seed=3
    )
    torch.manual_seed(3)
    encoder = build_method("ijepa", {}, ENCODER, MASKING, in_chans=1).context_encoder
    expected = encoder_features(
        encoder, to_model_input(images, normalization), "grid", grid_cells=2
    )
    assert baseline.shape == (12, 5 * encoder.embed_dim)
    np.testing.assert_array_equal(baseline, expected)


def test_raw_pixel_features(small_set):
    images, samples = small_set
    normalization = compute_normalization(images, samples)
    raw = raw_pixel_features(images, samples, normalization)
    assert raw.shape == (12, 16 * 16)
    expected = (images.reshape(12, -1) / 255 - normalization["mean"][0]) / normalization["std"][0]
    np.testing.assert_allclose(raw, expected, atol=1e-5)


STRATEGIES = ["multiblock", "rasterized", "block", "random"]
NUM_TARGETS = {"multiblock": 4, "rasterized": 3, "block": 1, "random": 1}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mask_statistics_describe_the_configured_strategy(strategy):
    masking = MaskingConfig(image_size=16, patch_size=2, strategy=strategy, stats_num_masks=40)
    stats = mask_statistics(masking, seed=0)
    assert stats["strategy"] == strategy
    assert stats["num_masks"] == 40
    assert stats["grid"] == [8, 8]
    assert stats["num_targets"] == NUM_TARGETS[strategy]
    assert stats["context_patches_inside_targets"] == 0
    assert mask_statistics(masking, seed=0) == stats


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mask_preview_draws_the_configured_strategy(small_set, strategy):
    images, _ = small_set
    masking = MaskingConfig(image_size=16, patch_size=2, strategy=strategy, preview_images=3)
    fig = mask_preview(images, masking, seed=0)
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 2 * 3
        assert strategy in fig.get_suptitle()
        # Axes are created row by row; top row: image + context overlay.
        for ax in fig.axes[:3]:
            assert len(ax.get_images()) == 2
            assert ax.get_title().startswith("context: ")
        # Bottom row: the image, then one overlay per target.
        for ax in fig.axes[3:]:
            assert len(ax.get_images()) == 1 + NUM_TARGETS[strategy]
            assert ax.get_title() == f"{NUM_TARGETS[strategy]} target(s)"
    finally:
        plt.close(fig)


def test_a_checkpoint_resumes_only_a_run_that_trains_the_same_way():
    """The identity a checkpoint carries changes with whatever changes the trained
    weights, and not with how the same steps are computed or saved."""

    def identity(method="ijepa", hyperparameters=None, seed=0, num_images=100, **training):
        pretraining = PretrainingConfig(
            method=method,
            hyperparameters=hyperparameters or {},
            training={"epochs": 2, **training},
        )
        return _run_identity(pretraining, ENCODER, MASKING, seed, num_images)

    reference = identity()
    assert identity() == reference
    retrains = {
        "method": identity(method="mae"),
        "hyperparameters": identity(hyperparameters={"ema_momentum": [0.998, 1.0]}),
        "lr": identity(lr=2e-3),
        "epochs": identity(epochs=3),
        "precision": identity(precision="bf16"),
        "crop_scale": identity(crop_scale=[0.3, 1.0]),
        "horizontal_flip_p": identity(horizontal_flip_p=0.5),
        "seed": identity(seed=1),
        "num_images": identity(num_images=101),
        "data": _run_identity(
            PretrainingConfig(method="ijepa", training={"epochs": 2}),
            ENCODER,
            MASKING,
            0,
            100,
            "another-data-set",
        ),
    }
    assert [name for name, other in retrains.items() if other == reference] == []
    assert (
        _run_identity(
            PretrainingConfig(method="ijepa", training={"epochs": 2}),
            ENCODER.model_copy(update={"depth": 2}),
            MASKING,
            0,
            100,
        )
        != reference
    )
    same_steps = {
        "resume": True,
        "checkpoint_every": 5,
        "keep_checkpoints": 3,
        "num_threads": 1,
        "device": "cpu",
        "loader_workers": 2,
        "accumulation_steps": 2,
        "compile": True,
    }
    assert [
        name for name, value in same_steps.items() if identity(**{name: value}) != reference
    ] == []
    watched = PretrainingConfig(
        method="ijepa",
        training={"epochs": 2},
        monitors={"every_steps": 3, "collapse": {"on_collapse": "stop"}},
    )
    assert _run_identity(watched, ENCODER, MASKING, 0, 100) == reference


def test_evaluation_refuses_features_that_do_not_match_the_labelled_images(small_set):
    """Features from an earlier dataset (another row count) are stale, not re-aligned."""
    _, samples = small_set
    stale = np.zeros((len(samples) + 1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"13 feature rows for 12 labelled images.*stale"):
        evaluate(stale, samples, EvaluationConfig(), seed=0)


def test_inputs_of_two_runs_are_refused_before_any_work():
    """A run stopped between saving images.npy and samples.csv leaves a 311-row array
    beside a 180-row table: every consumer of both stops and names the two files."""

    images = np.zeros((311, 8, 8, 1), dtype=np.uint8)
    samples = pd.DataFrame(
        {
            "label": np.arange(180) % 2,
            "split": ["train"] * 180,
            "pretrain": True,
            "path": [f"image[{i}]" for i in range(180)],
        }
    )
    normalization = {"mean": [0.5], "std": [0.25]}
    expected = r"images\.npy holds 311 images but .*samples\.csv describes 180"
    with pytest.raises(MixedRunsError, match=expected):
        compute_normalization(images, samples)
    with pytest.raises(MixedRunsError, match=expected):
        raw_pixel_features(images, samples, normalization)
    with pytest.raises(MixedRunsError, match=expected):
        pretrain(
            images,
            samples,
            normalization,
            ENCODER,
            MASKING,
            PretrainingConfig(method="mae", training={"epochs": 2}),
            0,
        )


def test_live_logger_writes_every_step_and_syncs_at_intervals(tmp_path, monkeypatch):
    """Every history row becomes one row of each curve at its own step, but the
    summary (and DVC Studio), which re-read every curve, sync only every
    LIVE_SYNC_EVERY_STEPS steps and at the end: syncing every step made logging cost
    grow with the square of the steps."""
    steps = 2 * LIVE_SYNC_EVERY_STEPS + 7
    syncs = []
    with Live(str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False) as live:
        original_sync = live.sync

        def counting_sync() -> None:
            syncs.append(live.step)
            original_sync()

        monkeypatch.setattr(live, "sync", counting_sync)
        log = live_logger(live)
        for step in range(steps):
            row = {"step": step, "epoch": 0, "loss": 1.0 / (step + 1), "elapsed_s": 0.1 * step}
            if step % 40 == 0:
                row["rankme"] = float(step)
            log(row)
        every = LIVE_SYNC_EVERY_STEPS
        assert syncs == [every - 1, 2 * every - 1]
    curves = tmp_path / "live" / "plots" / "metrics" / "train"
    loss = pd.read_csv(curves / "loss.tsv", sep="\t")
    assert loss["step"].tolist() == list(range(steps))
    np.testing.assert_allclose(loss["loss"], [1.0 / (s + 1) for s in range(steps)])
    assert pd.read_csv(curves / "rankme.tsv", sep="\t")["step"].tolist() == list(
        range(0, steps, 40)
    )
    assert sorted(path.stem for path in curves.glob("*.tsv")) == ["loss", "rankme"]
    summary = pd.read_json(tmp_path / "live" / "metrics.json", typ="series")
    assert summary["train"]["loss"] == pytest.approx(1.0 / steps)
