"""Image sources."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from selfsup.data.sources import SOURCES, ImageSet, load_source


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_source("digits", {})


def test_digits_shape_dtype_and_classes(digits):
    assert digits.images.shape == (1797, 8, 8, 1)
    assert digits.images.dtype == np.uint8
    assert digits.labels.shape == (1797,)
    assert digits.labels.dtype == np.int64
    assert sorted(np.unique(digits.labels).tolist()) == list(range(10))
    assert digits.class_names == [str(i) for i in range(10)]
    assert np.bincount(digits.labels).min() > 150


def test_digits_pixels_are_sklearn_values_scaled_to_0_255(digits):
    reference = sklearn_digits()
    assert digits.images.min() == 0 and digits.images.max() == 255
    expected = np.rint(reference.images * 255.0 / 16.0).astype(np.uint8)
    np.testing.assert_array_equal(digits.images[..., 0], expected)
    np.testing.assert_array_equal(digits.labels, reference.target)


def test_digits_takes_no_options():
    with pytest.raises(ValueError, match="no ingestion.options"):
        load_source("digits", {"root": "/tmp"})


def test_unknown_source_is_named():
    assert "digits" in SOURCES
    with pytest.raises(ValueError, match="'imagenet'") as caught:
        load_source("imagenet", {})
    assert "digits" in str(caught.value)


def test_image_set_validates_arrays():
    images = np.zeros((3, 4, 4, 1), dtype=np.uint8)
    ImageSet(images, np.zeros(3, dtype=np.int64), ["a"])
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.astype(np.float32), np.zeros(3, dtype=np.int64), ["a"])
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images[..., 0], np.zeros(3, dtype=np.int64), ["a"])
    with pytest.raises(ValueError, match="labels shape"):
        ImageSet(images, np.zeros(4, dtype=np.int64), ["a"])
