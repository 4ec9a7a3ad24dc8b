"""The training data's fingerprint: what changes it and what does not."""

from __future__ import annotations

import numpy as np

from selfsup.data.fingerprint import images_fingerprint


def images(seed: int, count: int = 600) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 8, 8, 1), dtype=np.uint8)


def names(count: int = 600, folder: str = "photos") -> list[str]:
    return [f"{folder}/{i:04d}.png" for i in range(count)]


ALL = np.ones(600, dtype=bool)


def test_same_data_same_fingerprint_and_it_is_short():
    first = images_fingerprint(images(0), ALL, names())
    assert first == images_fingerprint(images(0).copy(), ALL, names())
    assert len(first) == 16


def test_other_pixels_of_the_same_size_and_names_change_it():
    assert images_fingerprint(images(0), ALL, names()) != images_fingerprint(
        images(1), ALL, names()
    )


def test_other_file_names_change_it():
    assert images_fingerprint(images(0), ALL, names()) != images_fingerprint(
        images(0), ALL, names(folder="other")
    )


def test_the_selected_rows_matter():
    half = ALL.copy()
    half[300:] = False
    assert images_fingerprint(images(0), half, names()[:300]) != images_fingerprint(
        images(0), ALL, names()
    )


def test_a_change_in_a_sampled_image_changes_it_but_it_reads_only_a_sample():
    """600 rows, 256 sampled: the first and last rows are always among them."""
    changed = images(0)
    changed[-1, 0, 0, 0] ^= 1
    assert images_fingerprint(images(0), ALL, names()) != images_fingerprint(changed, ALL, names())
