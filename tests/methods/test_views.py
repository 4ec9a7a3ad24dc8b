"""Batched view augmentation against torchvision's functional ops, view by view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from selfsup.methods.views import AugmentationConfig, ViewAugmentation

EVERYTHING_ON = AugmentationConfig(
    crop_scale=(0.1, 1.0),
    horizontal_flip_p=0.5,
    colour_jitter={"strength": 1.0, "p": 0.8},
    grayscale_p=0.5,
    blur_p=0.5,
)


def torchvision_view(image: torch.Tensor, augmentation: ViewAugmentation, draws, row: int):
    """One view with torchvision's functional ops, in RandomResizedCrop, flip,
    ColorJitter (its adjustments in the drawn order), RandomGrayscale, GaussianBlur order."""
    size = [augmentation.image_size] * 2
    out = F.resized_crop(image, *draws.boxes[row].tolist(), size, antialias=True)
    if draws.flip[row]:
        out = F.horizontal_flip(out)
    colour = image.shape[0] == 3
    adjust = {0: F.adjust_brightness, 1: F.adjust_contrast}
    if colour:
        adjust.update({2: F.adjust_saturation, 3: F.adjust_hue})
    if draws.jitter[row]:
        for adjustment in draws.order[row]:
            if int(adjustment) in adjust:
                out = adjust[int(adjustment)](out, float(draws.factors[row, adjustment]))
    if colour and draws.grayscale[row]:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if draws.blur[row]:
        kernel = [augmentation.blur_kernel] * 2
        out = F.gaussian_blur(out, kernel, [float(draws.sigma[row])] * 2)
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_views_equal_torchvision_view_by_view(channels):
    augmentation = ViewAugmentation(EVERYTHING_ON, image_size=20, channels=channels)
    pixels = torch.rand(12, channels, 20, 20, generator=torch.Generator().manual_seed(0))
    rngs = [np.random.default_rng(row) for row in range(12)]
    draws = augmentation.draw(rngs, count=3)
    images = pixels.repeat(3, 1, 1, 1)
    views = augmentation.apply(images.clone(), draws)
    expected = torch.stack(
        [torchvision_view(image, augmentation, draws, row) for row, image in enumerate(images)]
    )
    assert views.shape == (36, channels, 20, 20)
    torch.testing.assert_close(views, expected, atol=1e-5, rtol=0)
    # Every option was exercised in this batch.
    for chosen in (draws.flip, draws.jitter, draws.grayscale, draws.blur):
        assert 0 < chosen.sum() < len(chosen)


def test_low_resolution_views_are_the_full_views_downsampled_by_torchvision():
    """A view with `output_size` is the full-size view with the same draws, then resized
    by torchvision with antialiasing."""
    full = ViewAugmentation(EVERYTHING_ON, image_size=20, channels=3)
    small = ViewAugmentation(EVERYTHING_ON, image_size=20, channels=3, output_size=8)
    pixels = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    draws = full.draw([np.random.default_rng(row) for row in range(6)], count=2)
    images = pixels.repeat(2, 1, 1, 1)
    expected = F.resize(full.apply(images.clone(), draws), [8, 8], antialias=True)
    views = small.apply(images.clone(), draws)
    assert views.shape == (12, 3, 8, 8)
    torch.testing.assert_close(views, expected, atol=1e-5, rtol=0)


def test_draws_are_view_major_and_each_image_draws_from_its_own_generator():
    augmentation = ViewAugmentation(EVERYTHING_ON, image_size=16, channels=3)
    draws = augmentation.draw([np.random.default_rng(row) for row in range(5)], count=2)
    assert draws.boxes.shape == (10, 4) and draws.order.shape == (10, 4)
    # View 1 of image 3 is row 1 * 5 + 3: the second view drawn from image 3's generator.
    alone = augmentation.draw([np.random.default_rng(3)], count=2)
    np.testing.assert_array_equal(draws.boxes[8], alone.boxes[1])
    np.testing.assert_array_equal(draws.factors[3], alone.factors[0])


def test_draws_follow_the_configured_ranges_and_probabilities():
    augmentation = ViewAugmentation(EVERYTHING_ON, image_size=32, channels=3)
    draws = augmentation.draw([np.random.default_rng(row) for row in range(2000)], count=1)
    brightness_contrast_saturation = draws.factors[:, :3]
    assert (
        brightness_contrast_saturation.min() >= 0.2 and brightness_contrast_saturation.max() <= 1.8
    )
    assert np.abs(draws.factors[:, 3]).max() <= 0.2
    for chosen, probability in ((draws.flip, 0.5), (draws.jitter, 0.8), (draws.grayscale, 0.5)):
        assert abs(chosen.mean() - probability) < 0.04  # binomial(2000): sd 0.011
    assert all(sorted(order) == [0, 1, 2, 3] for order in draws.order.tolist())
    assert draws.sigma.min() >= 0.1 and draws.sigma.max() <= 2.0
