"""Each method's example pictures: what it does to a few images, drawn after training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from selfsup.config import EncoderConfig, MaskingConfig
from selfsup.data.preprocessing import NormalizedImages, to_model_input, to_pixels
from selfsup.methods import build_method
from selfsup.methods.base import grey_outside
from selfsup.methods.mae import patchify, unpatchify
from selfsup.pretraining import example_rows, method_examples
from selfsup.randomness import SampleDraws

ENCODER = EncoderConfig(embed_dim=32, depth=1, num_heads=2)
MASKING = MaskingConfig(image_size=16, patch_size=4)  # 4x4 grid
NORMALIZATION = {"mean": [0.3], "std": [0.2]}
GREY = (0.5 - 0.3) / 0.2  # mid-grey, normalized


def method(name: str, **hyperparameters):
    torch.manual_seed(0)
    if name == "lejepa":
        hyperparameters = {"projector": {"hidden_dim": 16, "out_dim": 8}, **hyperparameters}
    built = build_method(name, hyperparameters, ENCODER, MASKING, 1, NORMALIZATION)
    return built.eval()


def images(count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def patch_values(batch: torch.Tensor) -> torch.Tensor:
    return patchify(batch, 4)  # (B, 16, 16)


def test_unpatchify_inverts_patchify():
    batch = torch.randn(2, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(batch, 4), 4, 3), batch)


def test_grey_outside_keeps_the_visible_patches_only():
    batch = images(2)
    visible = torch.zeros(2, 16, dtype=torch.bool)
    visible[0, [0, 5]] = True
    visible[1, 15] = True
    shown = patch_values(grey_outside(batch, visible, 4, method("mae").data))
    original = patch_values(batch)
    assert torch.equal(shown[visible], original[visible])
    assert torch.allclose(shown[~visible], torch.full_like(shown[~visible], GREY))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_shows_the_visible_patches_and_reconstructs_the_hidden_ones(norm_pix_loss):
    mae = method("mae", norm_pix_loss=norm_pix_loss)
    batch = images()
    draws = SampleDraws.first_batch(3, seed=4)
    with torch.no_grad():
        pictures = mae.examples(batch, draws)
        kept, restore = (mae.input_sampler()(batch, draws)[k] for k in ("kept", "restore"))
        predictions = mae.reconstruct(batch, kept, restore)
    assert list(pictures) == ["image", "visible (25%)", "reconstruction"]
    visible = torch.zeros(3, 16, dtype=torch.bool).scatter_(1, kept, True)
    assert visible.sum(dim=1).tolist() == [4, 4, 4]
    original = patch_values(batch)
    masked = patch_values(pictures["visible (25%)"])
    assert torch.equal(masked[visible], original[visible])
    assert torch.allclose(masked[~visible], torch.full_like(masked[~visible], GREY))
    rebuilt = patch_values(pictures["reconstruction"])
    assert torch.equal(rebuilt[visible], original[visible])
    if norm_pix_loss:
        # Predictions are standardized patches: each true patch's mean and spread undo it.
        mean = original.mean(dim=-1, keepdim=True)
        spread = (original.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        predictions = predictions * spread + mean
    torch.testing.assert_close(rebuilt[~visible], predictions[~visible])


def test_ijepa_shows_the_context_and_the_targets_it_trains_on():
    ijepa = method("ijepa")
    batch = images()
    draws = SampleDraws.first_batch(3, seed=2)
    pictures = ijepa.examples(batch, draws)
    inputs = ijepa.input_sampler()(batch, draws)
    original = patch_values(batch)
    for row in range(3):
        context = inputs["context_indices"][row][inputs["context_valid"][row]]
        targets = inputs["target_indices"][row].flatten().unique()
        for name, shown in (("context", context), ("targets", targets)):
            values = patch_values(pictures[name])[row]
            hidden = torch.ones(16, dtype=torch.bool)
            hidden[shown] = False
            assert torch.equal(values[shown], original[row][shown]), name
            assert torch.allclose(values[hidden], torch.full_like(values[hidden], GREY)), name


def test_simclr_shows_the_two_views_of_its_loss():
    simclr = method("simclr")
    batch = images()
    draws = SampleDraws.first_batch(3, seed=1)
    pictures = simclr.examples(batch, draws)
    views = simclr.views(batch, draws)
    assert torch.equal(pictures["view 1"], views[0])
    assert torch.equal(pictures["view 2"], views[1])
    assert not torch.equal(pictures["view 1"], pictures["view 2"])


def test_lejepa_shows_its_global_views_and_its_local_views_in_blocks():
    lejepa = method("lejepa", views=2, local_views={"count": 3, "image_size": 8})
    batch = images()
    draws = SampleDraws.first_batch(3, seed=1)
    pictures = lejepa.examples(batch, draws)
    inputs = lejepa.input_sampler()(batch, draws)
    assert list(pictures) == ["image", "view 1", "view 2", "local view 1", "local view 2"]
    assert torch.equal(pictures["view 2"], inputs["views"][1])
    local = pictures["local view 1"]
    assert local.shape == batch.shape
    # Each 8 px pixel fills a 2x2 block of the 16 px picture.
    assert torch.equal(local[..., ::2, ::2], inputs["local_views"][0])
    assert torch.equal(local[..., 1::2, 1::2], inputs["local_views"][0])


def test_to_pixels_inverts_the_model_input():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    normalization = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]}
    assert np.array_equal(to_pixels(to_model_input(pixels, normalization), normalization), pixels)


def test_examples_show_val_images_or_the_pretraining_ones_without_labels():
    samples = pd.DataFrame(
        {
            "split": ["train", "val", "test", "val", "train"] * 4,
            "pretrain": [True, False, False, False, True] * 4,
        }
    )
    assert example_rows(samples, 3).tolist() == [1, 3, 6]
    unlabelled = pd.DataFrame({"split": ["pretrain"] * 5, "pretrain": [True] * 5})
    assert example_rows(unlabelled, 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("name", ["ijepa", "mae", "simclr", "lejepa"])
def test_method_examples_are_uint8_pictures_repeatable_and_leave_the_mode(name):
    trained = method(name).train()
    pixels = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 1), dtype=np.uint8)
    source = NormalizedImages(pixels, NORMALIZATION)
    rows = np.array([2, 5, 7])
    first = method_examples(trained, source, rows, seed=3)
    second = method_examples(trained, source, rows, seed=3)
    assert trained.training
    assert first.keys() == second.keys()
    for key, picture in first.items():
        assert picture.dtype == np.uint8 and picture.shape == (3, 16, 16, 1), key
        assert np.array_equal(picture, second[key]), key
    assert np.array_equal(first["image"], pixels[rows])
