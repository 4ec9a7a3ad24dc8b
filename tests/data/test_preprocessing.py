"""Resizing and normalization."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.data.preprocessing import channel_statistics, resize_images, to_model_input


def test_resize_shape_dtype_and_constant_images():
    images = np.full((5, 8, 8, 1), 77, dtype=np.uint8)
    out = resize_images(images, 32, batch_size=2)
    assert out.shape == (5, 32, 32, 1)
    assert out.dtype == np.uint8
    assert (out == 77).all()


def test_resize_keeps_image_content():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    out = resize_images(images, 16)
    # Upsampling by 2 keeps the per-image, per-channel mean close.
    np.testing.assert_allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=3.0)
    assert not np.array_equal(out[0], out[1])


def test_resize_to_same_size_is_a_copy():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    out = resize_images(images, 4)
    np.testing.assert_array_equal(out, images)
    out[0, 0, 0, 0] = 255
    assert images[0, 0, 0, 0] == 0


def test_channel_statistics_and_normalization():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 5, 5, 2), dtype=np.uint8)
    stats = channel_statistics(images)
    pixels = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(stats["std"], pixels.std(axis=(0, 1, 2)))
    x = to_model_input(images, stats)
    assert x.dtype == torch.float32
    assert x.shape == (6, 2, 5, 5)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-5, rtol=0
    )


def test_channel_statistics_of_a_constant_channel_has_positive_std():
    stats = channel_statistics(np.zeros((2, 3, 3, 1), dtype=np.uint8))
    assert stats["mean"] == [0.0]
    assert stats["std"][0] > 0
    assert torch.isfinite(to_model_input(np.zeros((1, 3, 3, 1), dtype=np.uint8), stats)).all()
