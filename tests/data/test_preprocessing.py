"""Resizing and normalization."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.data.preprocessing import (
    NormalizedImages,
    ResizedImages,
    channel_statistics,
    resize_images,
    to_model_input,
)


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


def test_resized_images_stream_the_same_pixels_as_resize_images(monkeypatch):
    monkeypatch.setattr("selfsup.data.chunked.CHUNK_ROWS", 3)  # several chunks
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    lazy = ResizedImages(images, 20)
    assert lazy.shape == (10, 20, 20, 3)
    chunks = list(lazy.chunks())
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), resize_images(images, 20))


def test_channel_statistics_of_selected_rows_match_numpy_exactly():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (50, 7, 7, 3), dtype=np.uint8)
    rows = rng.random(50) < 0.4
    stats = channel_statistics(images, rows)
    pixels = images[rows].astype(np.float64) / 255.0
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=(0, 1, 2)), rtol=1e-12)


def test_normalized_images_read_rows_of_a_memory_mapped_array(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (9, 5, 6, 2), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = np.array([True, False, True, True, False, True, False, False, True])
    stats = {"mean": [0.3, 0.6], "std": [0.2, 0.1]}
    view = NormalizedImages(mapped, stats, rows)
    assert len(view) == 5 and view.shape == (5, 2, 5, 6)
    expected = to_model_input(images[rows], stats)
    torch.testing.assert_close(view[np.array([4, 0, 2])], expected[[4, 0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(view[1:3], expected[1:3], rtol=0, atol=0)
    torch.testing.assert_close(view[torch.tensor([3])], expected[[3]], rtol=0, atol=0)


def test_channel_statistics_do_not_depend_on_chunk_size(monkeypatch):
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    rows = rng.random(30) < 0.5
    whole = channel_statistics(images, rows)
    # A byte budget smaller than one int64 row: one image per chunk.
    monkeypatch.setattr("selfsup.data.chunked.CHUNK_BYTES", 8)
    assert channel_statistics(images, rows) == whole
    assert channel_statistics(images) == channel_statistics(images, np.ones(30, dtype=bool))
