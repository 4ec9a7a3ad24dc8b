"""What making a batch's crops and views costs: the batched code against torchvision
called once per image or view, side by side.

For one batch of --batch-size random images at the default size, times
- the training loop's RandomResizedCrop (I-JEPA's crop scale): `selfsup.batches.
  random_resized_crops` against torchvision's `v2.RandomResizedCrop` called per image;
- SimCLR's 2 views and LeJEPA's global views (`views`; their conf/base augmentations):
  `selfsup.methods.views.AugmentedViews` against torchvision's v2 pipeline (crop,
  flip, colour jitter, grayscale on colour images, blur when on) called per view.
Both sides draw their parameters per image from the same seeds the training loop uses,
so both pay for that. Prints the processor, milliseconds per batch (median of --repeats
timings of --calls calls each) and the ratio.

Usage (repository root, project environment):
    python benchmarks/input_sampling.py [--batch-size 64] [--calls 30] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from machine import cpu_model
from pretrain_throughput import base_parameters
from torchvision.transforms import v2

from selfsup.batches import random_resized_crops
from selfsup.methods.views import AugmentationConfig, AugmentedViews, ViewAugmentation
from selfsup.randomness import SampleDraws


def torchvision_pipeline(config: AugmentationConfig, size: int, channels: int) -> v2.Compose:
    """The same augmentations as one torchvision v2 transform (one view per call)."""
    s = config.colour_jitter.strength
    jitter = (
        v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        if channels == 3
        else v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s)
    )
    steps = [
        v2.RandomResizedCrop(
            size, scale=config.crop_scale, ratio=config.crop_ratio, antialias=True
        ),
        v2.RandomHorizontalFlip(config.horizontal_flip_p),
        v2.RandomApply([jitter], p=config.colour_jitter.p),
    ]
    if channels == 3:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    if config.blur_p > 0:
        kernel = max(3, (size // 10) | 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, config.blur_sigma)], p=config.blur_p))
    return v2.Compose(steps)


def per_call(transform: Callable, count: int) -> Callable:
    """`count` outputs per image, torchvision drawing from a generator seeded per image."""

    def run(images: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        seeds = [int(rng.integers(2**62)) for rng in draws.per_sample("crops")]
        out = torch.empty((count, *images.shape))
        with torch.random.fork_rng(devices=[]):
            for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
                torch.default_generator.manual_seed(seed)
                for view in range(count):
                    out[view, i] = transform(image)
        return out

    return run


def milliseconds(fn: Callable, images: torch.Tensor, draws: SampleDraws, args) -> float:
    fn(images, draws)
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.calls):
            fn(images, draws)
        timings.append((time.perf_counter() - start) / args.calls * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params = base_parameters()
    size, channels = params["masking"]["image_size"], 1
    images = torch.rand(
        args.batch_size, channels, size, size, generator=torch.Generator().manual_seed(0)
    )
    draws = SampleDraws(0, 0, 0, np.arange(args.batch_size))
    crop_scale = tuple(params["ijepa"]["training"]["crop_scale"])
    crop = v2.RandomResizedCrop([size, size], scale=crop_scale, antialias=True)
    cases = {
        "crops (I-JEPA, MAE)": (
            lambda x, d: random_resized_crops(x, crop_scale, d),
            per_call(crop, 1),
        )
    }
    for method, count in (("simclr", 2), ("lejepa", params["lejepa"]["hyperparameters"]["views"])):
        config = AugmentationConfig(**params[method]["hyperparameters"]["augmentations"])
        views = AugmentedViews(ViewAugmentation(config, size, channels), (0.0,), (1.0,), count)
        cases[f"{method} views ({count})"] = (
            views,
            per_call(torchvision_pipeline(config, size, channels), count),
        )
    print(f"# {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"# batch of {args.batch_size} images {size}x{size}x{channels}, median of {args.repeats}")
    print("| inputs | batched (ms) | torchvision per call (ms) | batched / per call |")
    print("|---|---|---|---|")
    for name, (batched, reference) in cases.items():
        new, old = (milliseconds(fn, images, draws, args) for fn in (batched, reference))
        print(f"| {name} | {new:.2f} | {old:.2f} | {new / old:.2f} |", flush=True)


if __name__ == "__main__":
    main()
