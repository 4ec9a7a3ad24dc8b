"""Stratified train/val/test splits."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.data.splits import SPLITS, stratified_split


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """Unbalanced classes: 300, 200 and 100 samples, shuffled."""
    labels = np.repeat([0, 1, 2], [300, 200, 100])
    return np.random.default_rng(0).permutation(labels)


def test_every_sample_gets_exactly_one_split(labels):
    split = stratified_split(labels, val=0.2, test=0.2, seed=0)
    assert split.shape == labels.shape
    assert set(split.tolist()) == set(SPLITS)
    indices = {name: set(np.flatnonzero(split == name)) for name in SPLITS}
    assert indices["train"].isdisjoint(indices["val"])
    assert indices["train"].isdisjoint(indices["test"])
    assert indices["val"].isdisjoint(indices["test"])
    assert set().union(*indices.values()) == set(range(len(labels)))


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.2), (0.1, 0.3)])
def test_sizes_and_class_proportions(labels, val, test):
    split = stratified_split(labels, val=val, test=test, seed=1)
    n = len(labels)
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    overall = np.bincount(labels) / n
    for name, fraction in fractions.items():
        members = labels[split == name]
        assert abs(len(members) - fraction * n) <= 2, name
        proportions = np.bincount(members, minlength=3) / len(members)
        np.testing.assert_allclose(proportions, overall, atol=0.02, err_msg=name)


def test_deterministic_given_seed(labels):
    first = stratified_split(labels, 0.2, 0.2, seed=7)
    np.testing.assert_array_equal(first, stratified_split(labels, 0.2, 0.2, seed=7))
    assert not np.array_equal(first, stratified_split(labels, 0.2, 0.2, seed=8))


def test_a_class_with_fewer_than_three_images_is_named_before_splitting():
    labels = np.repeat([0, 1, 2], [10, 2, 10])
    with pytest.raises(ValueError, match=r"class 'sevens' has 2 image\(s\).*at least 3 per class"):
        stratified_split(labels, 0.2, 0.2, seed=0, class_names=["ones", "sevens", "nines"])


def test_fractions_too_small_for_every_class_in_every_split_name_the_parameter():
    labels = np.repeat(np.arange(10), 3)  # 30 images: a 5 % test split holds 1.5 images
    with pytest.raises(ValueError, match=r"ingestion.split val=0.05, test=0.05"):
        stratified_split(labels, 0.05, 0.05, seed=0)
