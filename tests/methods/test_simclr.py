"""SimCLR: the NT-Xent loss against the paper's formula, views, features, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from selfsup.config import MaskingConfig, PretrainingConfig, SimCLRConfig
from selfsup.evaluation import encoder_features
from selfsup.methods import METHODS, build_method
from selfsup.methods.simclr import SimCLR, nt_xent_loss
from tests.helpers import TINY_ENCODER, draws_for

MASKING = MaskingConfig(image_size=16, patch_size=4)  # 4x4 grid: cheap
SMALL_HEAD = {"hidden_dim": 16, "out_dim": 8}
# Every random augmentation off, crops of the whole image: each view is the input.
NO_AUGMENTATION = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "horizontal_flip_p": 0.0,
    "colour_jitter": {"p": 0.0},
    "grayscale_p": 0.0,
    "blur_p": 0.0,
}
NORMALIZATION = {
    1: {"mean": [0.3], "std": [0.2]},
    3: {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]},
}


def tiny_simclr(
    in_chans: int = 1, normalization: dict | None = None, seed: int = 0, **hyperparameters
) -> SimCLR:
    torch.manual_seed(seed)
    params = {"projection_head": SMALL_HEAD, **hyperparameters}
    return build_method("simclr", params, TINY_ENCODER, MASKING, in_chans, normalization)


def normalized_batch(batch: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Images whose pixels lie in [0, 1], normalized with NORMALIZATION[channels]."""
    pixels = torch.rand(batch, channels, 16, 16, generator=torch.Generator().manual_seed(seed))
    stats = NORMALIZATION[channels]
    mean = torch.tensor(stats["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(stats["std"]).view(1, -1, 1, 1)
    return (pixels - mean) / std


# --- NT-Xent -------------------------------------------------------------------------


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def reference_nt_xent(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, include_self: bool = False
) -> float:
    """The paper's loss written with loops: views z_1..z_2N (z_a then z_b), view i's
    positive is view (i + N) mod 2N, the denominator sums over every k != i
    (`include_self` adds k == i, the wrong version)."""
    views = [row.tolist() for row in torch.cat([z_a, z_b]).double()]
    n2 = len(views)
    total = 0.0
    for i in range(n2):
        positive = (i + n2 // 2) % n2
        numerator = math.exp(cosine(views[i], views[positive]) / temperature)
        denominator = sum(
            math.exp(cosine(views[i], views[k]) / temperature)
            for k in range(n2)
            if include_self or k != i
        )
        total += -math.log(numerator / denominator)
    return total / n2


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_nt_xent_matches_the_paper_formula(temperature, batch):
    generator = torch.Generator().manual_seed(batch)
    z_a = torch.randn(batch, 6, generator=generator, dtype=torch.float64)
    z_b = torch.randn(batch, 6, generator=generator, dtype=torch.float64)
    loss = nt_xent_loss(z_a, z_b, temperature)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(reference_nt_xent(z_a, z_b, temperature), rel=1e-9)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_excludes_self_similarity_from_the_denominator(temperature):
    generator = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, 4, 6, generator=generator, dtype=torch.float64)
    loss = nt_xent_loss(z_a, z_b, temperature).item()
    with_self = reference_nt_xent(z_a, z_b, temperature, include_self=True)
    # The self term exp(1/t) only adds to the denominator: the wrong loss is larger.
    assert with_self > loss + 1e-3
    assert loss == pytest.approx(reference_nt_xent(z_a, z_b, temperature), rel=1e-9)


def test_nt_xent_single_pair_is_zero():
    """N=1: each view's only other view is its positive, so every term is -log 1."""
    z_a, z_b = torch.randn(2, 1, 5, generator=torch.Generator().manual_seed(1))
    assert nt_xent_loss(z_a, z_b, 0.5).item() == pytest.approx(0.0, abs=1e-6)


def test_nt_xent_is_invariant_to_rescaling_each_vector():
    generator = torch.Generator().manual_seed(2)
    z_a, z_b = torch.randn(2, 4, 6, generator=generator, dtype=torch.float64)
    scales = torch.rand(2, 4, 1, generator=generator, dtype=torch.float64) * 10 + 0.1
    expected = nt_xent_loss(z_a, z_b, 0.2)
    torch.testing.assert_close(nt_xent_loss(scales[0] * z_a, scales[1] * z_b, 0.2), expected)
    torch.testing.assert_close(nt_xent_loss(3.0 * z_a, 3.0 * z_b, 0.2), expected)


def test_identical_separated_views_have_lower_loss_than_random_ones():
    n, temperature = 4, 0.1
    separated = torch.eye(n, 8, dtype=torch.float64)  # orthogonal pairs
    best = nt_xent_loss(separated, separated.clone(), temperature).item()
    # Positive cosine 1, the 2N-2 negatives cosine 0: the formula's closed form.
    closed_form = -math.log(math.e**10 / (math.e**10 + (2 * n - 2)))
    assert best == pytest.approx(closed_form, rel=1e-9)
    generator = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(2, n, 8, generator=generator, dtype=torch.float64)
    assert best < nt_xent_loss(z_a, z_b, temperature).item()


# --- the method ----------------------------------------------------------------------


def test_registered_by_name_and_built_with_its_parts():
    assert METHODS["simclr"] is SimCLR
    method = tiny_simclr(temperature=0.3)
    assert isinstance(method, SimCLR)
    assert method.config.temperature == 0.3
    assert method.projection_head.fc1.in_features == TINY_ENCODER.embed_dim
    assert method.projection_head.fc2.out_features == SMALL_HEAD["out_dim"]


@pytest.mark.parametrize("channels", [1, 3])
def test_views_shape_and_reproducibility(channels):
    method = tiny_simclr(channels, NORMALIZATION[channels])
    images = normalized_batch(4, channels)
    views = method.views(images, draws_for(images, 0))
    assert views.shape == (2, 4, channels, 16, 16)
    assert views.dtype == images.dtype
    # Independent augmentations: the two views of one image differ.
    for i in range(4):
        assert not torch.allclose(views[0, i], views[1, i])
    torch.testing.assert_close(method.views(images, draws_for(images, 0)), views, rtol=0, atol=0)
    assert not torch.allclose(method.views(images, draws_for(images, 1)), views)


def test_views_do_not_touch_the_global_torch_rng():
    method = tiny_simclr()
    images = normalized_batch(2, 1)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    method.views(images, draws_for(images, 0))
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_views_without_augmentation_are_the_normalized_input(channels):
    """Views un-normalize, augment in [0, 1] pixels and re-normalize: with every
    augmentation off the round trip is the identity (not a clamp of normalized values,
    which here lie well outside [0, 1])."""
    method = tiny_simclr(channels, NORMALIZATION[channels], augmentations=NO_AUGMENTATION)
    images = normalized_batch(3, channels)
    assert images.min() < -1 and images.max() > 1
    views = method.views(images, draws_for(images, 0))
    for view in views:
        torch.testing.assert_close(view, images, atol=1e-4, rtol=0)


def test_flip_only_views_are_mirrored_inputs():
    augmentations = {**NO_AUGMENTATION, "horizontal_flip_p": 1.0}
    method = tiny_simclr(1, NORMALIZATION[1], augmentations=augmentations)
    images = normalized_batch(2, 1)
    views = method.views(images, draws_for(images, 0))
    for view in views:
        torch.testing.assert_close(view, images.flip(-1), atol=1e-4, rtol=0)


def test_grayscale_only_views_have_equal_channels():
    augmentations = {**NO_AUGMENTATION, "grayscale_p": 1.0}
    method = tiny_simclr(3, NORMALIZATION[3], augmentations=augmentations)
    views = method.views(normalized_batch(2, 3), draws_for(normalized_batch(2, 3), 0))
    stats = NORMALIZATION[3]
    pixels = views * torch.tensor(stats["std"]).view(1, 1, 3, 1, 1)
    pixels = pixels + torch.tensor(stats["mean"]).view(1, 1, 3, 1, 1)
    torch.testing.assert_close(pixels[:, :, 1], pixels[:, :, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, :, 2], pixels[:, :, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_augmented_views_stay_valid_pixels(channels):
    """Default (paper) augmentations, jitter always on: un-normalized views lie in [0, 1]."""
    augmentations = {"colour_jitter": {"p": 1.0, "strength": 1.0}, "blur_p": 0.5}
    method = tiny_simclr(channels, NORMALIZATION[channels], augmentations=augmentations)
    views = method.views(normalized_batch(4, channels), draws_for(normalized_batch(4, channels), 0))
    stats = NORMALIZATION[channels]
    pixels = views * torch.tensor(stats["std"]).view(1, 1, -1, 1, 1)
    pixels = pixels + torch.tensor(stats["mean"]).view(1, 1, -1, 1, 1)
    assert pixels.min() >= -1e-5
    assert pixels.max() <= 1 + 1e-5


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batch", [4, 8])
def test_training_loss_at_init_is_near_log_2b_minus_1(channels, batch):
    """At init the projections of all views are about equally similar, so each anchor
    is about uniform over its 2B - 1 candidates. Temperature 1 keeps the small spread of
    cosines at init from being amplified (at 0.2 it is 5x larger)."""
    method = tiny_simclr(channels, NORMALIZATION[channels], temperature=1.0)
    loss = method.loss_on(
        normalized_batch(batch, channels), draws_for(normalized_batch(batch, channels), 0)
    )
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(2 * batch - 1), abs=0.1)


def test_training_loss_is_nt_xent_of_the_projected_views():
    method = tiny_simclr(1, NORMALIZATION[1], temperature=0.4).eval()
    images = normalized_batch(3, 1)
    loss = method.loss_on(images, draws_for(images, 5))
    view_a, view_b = method.views(images, draws_for(images, 5))
    with torch.no_grad():
        z_a = method.projection_head(method.encoder(view_a).mean(dim=1))
        z_b = method.projection_head(method.encoder(view_b).mean(dim=1))
    assert loss.item() == pytest.approx(reference_nt_xent(z_a, z_b, 0.4), rel=1e-4)


def test_evaluation_encoder_is_the_encoder_and_features_are_before_the_head():
    method = tiny_simclr()
    encoder = method.evaluation_encoder()
    assert encoder is method.encoder
    assert all(encoder is not module for module in method.projection_head.modules())
    images = normalized_batch(3, 1)
    features = encoder_features(encoder, images)
    assert features.shape == (3, TINY_ENCODER.embed_dim)
    assert TINY_ENCODER.embed_dim != SMALL_HEAD["out_dim"]
    with torch.no_grad():
        np.testing.assert_allclose(features, method.embed(images).numpy(), atol=1e-6)
        assert method.projection_head(method.embed(images)).shape == (3, SMALL_HEAD["out_dim"])


def test_gradients_reach_the_encoder_and_the_projection_head():
    method = tiny_simclr()
    method.loss_on(normalized_batch(4, 1), draws_for(normalized_batch(4, 1), 0)).backward()
    for part in (method.encoder, method.projection_head):
        for name, param in part.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
        assert any(param.grad.abs().sum() > 0 for param in part.parameters())
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.projection_head.fc2.weight.grad.abs().sum() > 0


# --- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_non_positive_temperature_is_rejected(temperature):
    with pytest.raises(ValidationError, match="temperature"):
        SimCLRConfig(temperature=temperature)
    with pytest.raises(ValidationError, match="temperature"):
        PretrainingConfig(method="simclr", hyperparameters={"temperature": temperature})


@pytest.mark.parametrize("crop_scale", [(0.0, 1.0), (0.5, 0.2), (0.1, 1.5), (-0.1, 0.5)])
def test_bad_crop_scale_is_rejected(crop_scale):
    with pytest.raises(ValidationError, match="crop_scale"):
        SimCLRConfig(augmentations={"crop_scale": crop_scale})
    with pytest.raises(ValidationError, match="crop_scale"):
        PretrainingConfig(
            method="simclr", hyperparameters={"augmentations": {"crop_scale": crop_scale}}
        )


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(ValidationError, match="temprature"):
        PretrainingConfig(method="simclr", hyperparameters={"temprature": 0.1})


def test_valid_config_is_accepted():
    config = PretrainingConfig(
        method="simclr",
        hyperparameters={"temperature": 0.5, "augmentations": {"crop_scale": (0.2, 1.0)}},
    )
    assert config.method == "simclr"
