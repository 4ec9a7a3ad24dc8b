"""Frozen-feature evaluation protocols."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info, threadpool_limits

from selfsup import evaluation
from selfsup.config import EvaluationConfig, WeightedKnnConfig
from selfsup.evaluation import (
    check_pooling,
    encoder_features,
    evaluate_features,
    few_shot_indices,
    knn_accuracy,
    select_c_and_score,
    tsne_2d,
    weighted_knn_accuracy,
)
from selfsup.models import VisionTransformerEncoder

NUM_CLASSES, PER_CLASS, DIM = 10, 40, 16
CONFIG = EvaluationConfig(c_grid=[0.1, 1.0], max_iter=200, low_shot={"draws": 2})


def gaussian_clusters(separation: float = 10.0, seed: int = 0):
    """10 Gaussian clusters; per class 24 train, 8 val, 8 test."""
    rng = np.random.default_rng(seed)
    centers = separation * rng.standard_normal((NUM_CLASSES, DIM))
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    features = centers[labels] + rng.standard_normal((len(labels), DIM))
    split = np.array((["train"] * 24 + ["val"] * 8 + ["test"] * 8) * NUM_CLASSES, dtype=object)
    order = rng.permutation(len(labels))
    return features[order].astype(np.float32), labels[order], split[order]


@pytest.fixture(scope="module")
def separable_metrics():
    features, labels, split = gaussian_clusters()
    return evaluate_features(features, labels, split, CONFIG, seed=0)


def test_separable_features_score_near_perfect(separable_metrics):
    assert separable_metrics["linear_probe"]["test_accuracy"] >= 0.98
    assert separable_metrics["knn"]["test_accuracy"] >= 0.98


def test_evaluate_features_output_structure(separable_metrics):
    m = separable_metrics
    assert set(m) >= {"linear_probe", "low_shot", "knn"}
    assert set(m["linear_probe"]) >= {"test_accuracy", "C"}
    assert m["linear_probe"]["C"] in CONFIG.c_grid
    assert set(m["low_shot"]) == {"1", "5", "10"}
    for shots in ("1", "5", "10"):
        assert set(m["low_shot"][shots]) == {"mean", "std"}
        assert 0.0 <= m["low_shot"][shots]["mean"] <= 1.0
        assert m["low_shot"][shots]["std"] >= 0.0
    assert set(m["knn"]) == {"test_accuracy"}
    assert m["feature_dim"] == DIM


def test_uninformative_features_score_near_chance():
    rng = np.random.default_rng(1)
    features, _, split = gaussian_clusters()
    noise = rng.standard_normal(features.shape).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, len(noise))
    # Every class needs 10 train samples for the 10-shot protocol.
    config = EvaluationConfig(c_grid=[0.1, 1.0], max_iter=200, low_shot={"shots": [1], "draws": 2})
    m = evaluate_features(noise, labels, split, config, seed=0)
    assert m["linear_probe"]["test_accuracy"] < 0.35
    assert m["knn"]["test_accuracy"] < 0.35


def test_evaluate_features_is_deterministic(separable_metrics):
    features, labels, split = gaussian_clusters()
    assert evaluate_features(features, labels, split, CONFIG, seed=0) == separable_metrics


@pytest.mark.parametrize("grid", [[0.001, 0.1, 10.0], [10.0, 0.003, 1e-4, 0.001]])
def test_select_c_and_score_matches_independent_fits(grid):
    """Against scikit-learn's own solver (lbfgs), each C fitted from zero, in float64:
    the same C and the same accuracies, whatever order the grid lists its values in.
    On a tie the first in the grid's order wins: 0.003 and 0.001 tie on val here and
    differ on test, and the fits run from the smallest C up."""
    features, labels, split = gaussian_clusters(separation=0.6, seed=2)
    part = {s: (features[split == s], labels[split == s]) for s in ("train", "val", "test")}
    config = EvaluationConfig(c_grid=grid, max_iter=5000)
    result = select_c_and_score(part["train"], part["val"], part["test"], config)
    fits = {
        c: LogisticRegression(C=c, max_iter=5000, tol=config.tol).fit(
            part["train"][0].astype(np.float64), part["train"][1]
        )
        for c in config.c_grid
    }
    val_scores = {c: model.score(*part["val"]) for c, model in fits.items()}
    best_c = max(config.c_grid, key=lambda c: (val_scores[c], -config.c_grid.index(c)))
    if 0.003 in grid:
        assert best_c == 0.003 and val_scores[0.003] == val_scores[0.001]
    assert result["C"] == best_c
    assert result["val_accuracy"] == pytest.approx(val_scores[best_c])
    assert result["test_accuracy"] == pytest.approx(fits[best_c].score(*part["test"]))


def test_a_fit_started_from_another_c_ends_where_a_fit_from_zero_ends():
    """More dimensions than images, as in the low-shot probes of raw pixels: the fit of
    C=10 started from the C=0.01 solution reaches the optimum the fit from zero reaches
    (the loss is strictly convex, both run to tol) in fewer iterations."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 200)).astype(np.float32)
    y = np.arange(50) % 5
    x[np.arange(50), y] += 3.0
    from_zero = evaluation.fit_logistic(x, y, 10.0, 2000, 1e-8)
    start = evaluation.fit_logistic(x, y, 0.01, 2000, 1e-8)
    start_coef = start.coef_.copy()
    warm = evaluation.fit_logistic(x, y, 10.0, 2000, 1e-8, start=start)
    np.testing.assert_allclose(warm.coef_, from_zero.coef_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(warm.intercept_, from_zero.intercept_, rtol=0, atol=1e-5)
    probe = rng.normal(size=(400, 200))
    np.testing.assert_array_equal(warm.predict(probe), from_zero.predict(probe))
    assert warm.n_iter_.max() < from_zero.n_iter_.max()
    np.testing.assert_array_equal(start.coef_, start_coef)  # the start is left as it was


@pytest.mark.parametrize("shots", [1, 5, 10])
def test_few_shot_indices_gives_k_per_class(shots):
    labels = np.repeat(np.arange(10), 12)
    np.random.default_rng(0).shuffle(labels)
    chosen = few_shot_indices(labels, shots, np.random.default_rng(3))
    assert len(chosen) == 10 * shots
    assert len(np.unique(chosen)) == len(chosen)
    counts = np.bincount(labels[chosen], minlength=10)
    assert (counts == shots).all()
    again = few_shot_indices(labels, shots, np.random.default_rng(3))
    assert np.array_equal(chosen, again)


def test_few_shot_indices_raises_when_a_class_is_too_small():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(ValueError, match="shots=2"):
        few_shot_indices(labels, 2, np.random.default_rng(0))


def test_knn_accuracy_with_k1_is_nearest_cosine_neighbour():
    rng = np.random.default_rng(4)
    train_x, test_x = rng.standard_normal((50, 5)), rng.standard_normal((30, 5))
    train_y, test_y = rng.integers(0, 3, 50), rng.integers(0, 3, 30)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    nearest = (unit(test_x) @ unit(train_x).T).argmax(axis=1)
    expected = float((train_y[nearest] == test_y).mean())
    assert knn_accuracy((train_x, train_y), (test_x, test_y), k=1) == pytest.approx(expected)


def test_knn_k_larger_than_train_set_is_clamped():
    x = np.eye(3)
    y = np.array([0, 1, 1])
    assert knn_accuracy((x, y), (x, y), k=50) == pytest.approx(2 / 3)


def test_encoder_features_pool_tokens():
    torch.manual_seed(0)
    encoder = VisionTransformerEncoder(8, 2, 1, embed_dim=8, depth=4, num_heads=2)
    images = torch.randn(7, 1, 8, 8)
    last = encoder_features(encoder, images, "last", batch_size=3)
    last4 = encoder_features(encoder, images, "last4", batch_size=256)
    assert last.dtype == np.float32
    assert last.shape == (7, 8)
    assert last4.shape == (7, 32)
    with torch.no_grad():
        expected_last = encoder(images).mean(dim=1).numpy()
        layers = encoder.forward_layers(images, last=4)
    expected_last4 = np.concatenate([out.mean(dim=1).numpy() for out in layers], axis=1)
    np.testing.assert_allclose(last, expected_last, atol=1e-6)
    np.testing.assert_allclose(last4, expected_last4, atol=1e-6)
    np.testing.assert_allclose(last4[:, -8:], last, atol=1e-6)


def cell_means(tokens: np.ndarray, side: int, cells: int) -> np.ndarray:
    """(B, side*side, D) raster-order tokens -> (B, cells*cells, D): each cell the mean
    of rows floor(i*side/cells) .. ceil((i+1)*side/cells) - 1, the same for columns."""
    grid = tokens.reshape(len(tokens), side, side, -1)
    edges = [(i * side // cells, -(-(i + 1) * side // cells)) for i in range(cells)]
    return np.stack(
        [grid[:, r0:r1, c0:c1].mean(axis=(1, 2)) for r0, r1 in edges for c0, c1 in edges],
        axis=1,
    )


@pytest.mark.parametrize("cells", [1, 2, 3, 4])
def test_grid_pooling_is_the_mean_next_to_cell_means(cells):
    """The 4x4 patch grid in 2x2 cells of 2x2 patches, in 3x3 overlapping cells of up to
    2x2 patches (adaptive pooling's rule), one cell (the mean again) or one patch each."""
    torch.manual_seed(0)
    encoder = VisionTransformerEncoder(8, 2, 1, embed_dim=8, depth=2, num_heads=2)
    images = torch.randn(5, 1, 8, 8)
    features = encoder_features(encoder, images, "grid", batch_size=2, grid_cells=cells)
    assert features.shape == (5, 8 * (1 + cells * cells))
    with torch.no_grad():
        tokens = encoder(images).numpy()
    np.testing.assert_allclose(features[:, :8], tokens.mean(axis=1), atol=1e-6)
    expected = cell_means(tokens, 4, cells).reshape(5, -1)
    np.testing.assert_allclose(features[:, 8:], expected, atol=1e-6)
    if cells == 4:  # one patch per cell: the tokens themselves
        np.testing.assert_allclose(features[:, 8:], tokens.reshape(5, -1), atol=1e-6)


def test_grid_pooling_keeps_where_things_are_and_the_mean_does_not():
    """Two images that are mirror images of each other in patch order have the same
    token mean under an encoder without position embeddings, but not the same grid."""
    torch.manual_seed(0)
    encoder = VisionTransformerEncoder(8, 4, 1, embed_dim=8, depth=1, num_heads=2)
    encoder.pos_embed.zero_()
    image = torch.zeros(1, 1, 8, 8)
    image[..., :4, :4] = 1.0
    pair = torch.cat([image, image.flip(-1)])
    mean = encoder_features(encoder, pair, "last")
    grid = encoder_features(encoder, pair, "grid", grid_cells=2)
    np.testing.assert_allclose(mean[0], mean[1], atol=1e-5)
    assert np.abs(grid[0] - grid[1]).max() > 0.1


@pytest.mark.parametrize(
    ("pooling", "cells", "depth", "grid", "named"),
    [("grid", 9, 4, 8, "features.grid_cells=9"), ("last4", 4, 3, 8, "encoder.depth")],
)
def test_read_outs_the_encoder_cannot_give_are_refused(pooling, cells, depth, grid, named):
    with pytest.raises(ValueError, match=named):
        check_pooling(pooling, cells, depth, grid)
    check_pooling("last", cells, depth, grid)


def record_blas_threads(monkeypatch) -> list[int]:
    """The BLAS thread count each probe fit sees, appended as the fits happen."""
    seen = []

    class RecordingLogisticRegression(LogisticRegression):
        def fit(self, x, y):
            seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
            return super().fit(x, y)

    monkeypatch.setattr(evaluation, "LogisticRegression", RecordingLogisticRegression)
    return seen


def test_probes_fit_on_one_blas_thread_whatever_the_process_allows(monkeypatch):
    """lbfgs stopped at max_iter depends on how float sums are split over threads, so
    the probes pin BLAS to one thread: the same features give the same accuracy on any
    machine."""
    seen = record_blas_threads(monkeypatch)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 4
    with threadpool_limits(limits=2, user_api="blas"):
        evaluation.fit_logistic(x, y, 1.0, 50, 1e-8)
    assert seen and set(seen) == {1}


def test_every_protocol_standardizes_with_the_train_split_only():
    """evaluate_features rebuilt from scikit-learn and numpy: the scaler is fit on the
    train rows (val and test are scaled with the train statistics), C is picked on val,
    low-shot subsets are drawn class by class from the seed, and kNN (k=1) is the
    nearest cosine neighbour of the standardized features. Val and test are shifted and
    stretched away from train, so a scaler fit on any other rows gives other numbers."""
    features, labels, split = gaussian_clusters(separation=0.6, seed=5)
    features = features.copy()
    away = split != "train"
    features[away] = 3.0 * features[away] + 2.0
    config = EvaluationConfig(
        c_grid=[0.01, 1.0], max_iter=300, knn_k=1, low_shot={"shots": [1, 5], "draws": 2}
    )
    result = evaluate_features(features, labels, split, config, seed=7)

    train = split == "train"
    mean, std = features[train].mean(axis=0), features[train].std(axis=0)
    x = ((features - mean) / std).astype(np.float32)
    part = {s: (x[split == s], labels[split == s]) for s in ("train", "val", "test")}

    def probe(train_x, train_y):
        fits = [
            LogisticRegression(C=c, max_iter=300, tol=config.tol).fit(train_x, train_y)
            for c in config.c_grid
        ]
        val = [fit.score(*part["val"]) for fit in fits]
        return fits[int(np.argmax(val))].score(*part["test"])  # first best C on ties

    assert result["linear_probe"]["test_accuracy"] == pytest.approx(probe(*part["train"]))

    rng = np.random.default_rng(7)
    train_y = part["train"][1]
    for shots in (1, 5):
        scores = []
        for _ in range(2):
            rows = np.concatenate(
                [
                    rng.choice(np.flatnonzero(train_y == label), size=shots, replace=False)
                    for label in range(NUM_CLASSES)
                ]
            )
            scores.append(probe(part["train"][0][rows], train_y[rows]))
        assert result["low_shot"][str(shots)]["mean"] == pytest.approx(np.mean(scores))
        assert result["low_shot"][str(shots)]["std"] == pytest.approx(np.std(scores))

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    nearest = (unit(part["test"][0]) @ unit(part["train"][0]).T).argmax(axis=1)
    expected_knn = float((train_y[nearest] == part["test"][1]).mean())
    assert result["knn"]["test_accuracy"] == pytest.approx(expected_knn)


def test_too_few_train_images_for_the_largest_shot_count_names_the_class_and_parameter():
    labels = np.array([0] * 12 + [1] * 4 + [0, 1] * 3)
    splits = np.array(["train"] * 16 + ["val", "val", "test", "test", "val", "test"])
    config = EvaluationConfig(low_shot={"shots": [1, 5]})
    with pytest.raises(ValueError, match=r"class 1 has 4 train images.*shots=5"):
        evaluation.check_enough_labels(labels, splits, config)
    evaluation.check_enough_labels(labels, splits, EvaluationConfig(low_shot={"shots": [1, 4]}))


_PROBE_ON_DIGITS = """
import json
import numpy as np
from sklearn.datasets import load_digits
from selfsup.config import EvaluationConfig
from selfsup.evaluation import evaluate_features
x, y = load_digits(return_X_y=True)
split = np.array(["train", "val", "test"])[np.arange(len(y)) % 3]
config = EvaluationConfig(c_grid=[0.001, 0.01, 0.1, 1.0, 10.0], low_shot={"shots": [1, 5, 10]})
print(json.dumps(evaluate_features(x.astype(np.float32), y, split, config, seed=0)))
"""


def _cpu_has(*flags: str) -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    words = set(cpuinfo.split())
    return all(flag in words for flag in flags)


def _blas_is_openblas() -> bool:
    return any(i.get("internal_api") == "openblas" for i in threadpool_info())


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine() != "x86_64" or not _cpu_has("avx2", "fma") or not _blas_is_openblas(),
    reason="switches OpenBLAS between x86 kernels with OPENBLAS_CORETYPE",
)
def test_probes_give_the_same_numbers_with_another_processors_blas_kernel():
    """OpenBLAS picks its kernel by processor (SSE on old CPUs, AVX2 with FMA on newer
    ones), and the kernels round differently. The same features must give the same
    metrics either way: fits in float32 to scikit-learn's default tolerance moved the
    1-shot mean here."""
    metrics = {}
    for kernel in ("Nehalem", "Haswell"):
        env = {**os.environ, "OPENBLAS_CORETYPE": kernel, "OPENBLAS_VERBOSE": "2"}
        done = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _PROBE_ON_DIGITS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"Core: {kernel}" in done.stdout + done.stderr  # the kernel really switched
        metrics[kernel] = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["Nehalem"] == metrics["Haswell"]


def test_a_probe_stopped_at_max_iter_is_reported_with_the_setting_to_raise(caplog):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)).astype(np.float32), np.arange(60) % 3
    with caplog.at_level("WARNING", logger="selfsup.evaluation"):
        evaluation.fit_logistic(x, y, 10.0, 2, 1e-8)
    assert "evaluation.max_iter=2" in caplog.text and "60 train images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfsup.evaluation"):
        evaluation.fit_logistic(x, y, 10.0, 2000, 1e-8)
    assert caplog.text == ""


def numpy_weighted_knn(train_x, train_y, test_x, test_y, k: int, temperature: float) -> float:
    """DINO's weighted kNN written out: L2-normalize, cosine similarities, the k largest,
    class votes summed with weights exp(similarity / T), the largest vote wins."""
    train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test_n = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    similarity = test_n @ train_n.T
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    votes = np.zeros((len(test_x), int(train_y.max()) + 1))
    for row, neighbours in enumerate(nearest):
        np.add.at(
            votes[row], train_y[neighbours], np.exp(similarity[row, neighbours] / temperature)
        )
    return float((votes.argmax(axis=1) == test_y).mean())


def test_weighted_knn_matches_dinos_formula_written_in_numpy():
    features, labels, split = gaussian_clusters(separation=0.8, seed=4)
    train = (features[split == "train"], labels[split == "train"])
    test = (features[split == "test"], labels[split == "test"])
    for k, temperature in ((20, 0.07), (5, 0.5), (1, 0.07)):
        config = WeightedKnnConfig(k=k, temperature=temperature)
        expected = numpy_weighted_knn(*train, *test, k, temperature)
        assert weighted_knn_accuracy(train, test, config) == pytest.approx(expected)


def test_weighted_knn_lets_one_close_neighbour_outvote_two_far_ones():
    """Where the majority vote follows the two distant neighbours, the weighted vote
    follows the near one: the two protocols measure different things."""
    train_x = np.array([[1.0, 0.05], [0.6, 0.8], [0.6, -0.8]])
    train_y = np.array([0, 1, 1])
    test = (np.array([[1.0, 0.0]]), np.array([0]))
    assert weighted_knn_accuracy((train_x, train_y), test, WeightedKnnConfig(k=3)) == 1.0
    assert knn_accuracy((train_x, train_y), test, k=3) == 0.0


def test_every_feature_set_gets_the_weighted_knn(separable_metrics):
    assert 0.0 <= separable_metrics["knn_weighted"]["test_accuracy"] <= 1.0
    assert separable_metrics["knn_weighted"]["test_accuracy"] > 0.9


def test_tsne_map_is_repeatable_and_keeps_separated_classes_apart():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 40))
    labels = np.repeat(np.arange(3), 30)
    features = (centres[labels] + rng.normal(0, 1, (90, 40))).astype(np.float32)
    points = tsne_2d(features, seed=1)
    assert points.shape == (90, 2) and np.isfinite(points).all()
    np.testing.assert_array_equal(points, tsne_2d(features, seed=1))
    # Every image's nearest neighbour on the map is of its own class.
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).all()
    # Few images: the perplexity shrinks below their count instead of failing.
    assert tsne_2d(features[:7], seed=1).shape == (7, 2)
    with pytest.raises(ValueError, match="at least 3 images"):
        tsne_2d(features[:2], seed=1)


def test_probes_fitted_side_by_side_equal_serial_fits_each_on_one_blas_thread(monkeypatch):
    """fit_probes runs the fits in threads: each result is what a serial fit gives, and
    every fit still sees one BLAS thread, even while other threads start and finish
    theirs."""
    features, labels, split = gaussian_clusters(separation=0.8, seed=2)
    part = {
        name: (features[split == name], labels[split == name]) for name in ("train", "val", "test")
    }
    rng = np.random.default_rng(0)
    subsets = [part["train"]]
    for shots in (1, 2, 3, 1, 2, 3):
        chosen = few_shot_indices(part["train"][1], shots, rng)
        subsets.append((part["train"][0][chosen], part["train"][1][chosen]))
    serial = [select_c_and_score(subset, part["val"], part["test"], CONFIG) for subset in subsets]
    seen = record_blas_threads(monkeypatch)
    monkeypatch.setattr(evaluation, "probe_workers", lambda: 3)
    with threadpool_limits(limits=2, user_api="blas"):
        assert evaluation.fit_probes(subsets, part, CONFIG) == serial
    assert len(seen) >= len(subsets) * len(CONFIG.c_grid) and set(seen) == {1}
