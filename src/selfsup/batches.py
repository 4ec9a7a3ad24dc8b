"""Training batches: which rows each step reads on each process, and the method's
inputs (crops, masks, views) made from them ahead of the step.

The order of rows is torch's `DistributedSampler` (a permutation seeded by seed +
epoch, dealt round-robin to the ranks; one rank when training in one process), so the
rows of a global batch are the same whatever the number of processes. Each global
batch is split into `accumulation_steps` micro-batches per rank. Every random draw is
keyed by (seed, epoch, step, row) (`selfsup.randomness`), so a micro-batch's inputs
are the same whichever process or loader worker makes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from selfsup.crops import crop_box, resized_crops
from selfsup.data.preprocessing import NormalizedImages
from selfsup.methods.base import InputSampler
from selfsup.randomness import SampleDraws


def random_resized_crops(
    images: torch.Tensor, scale: tuple[float, float], draws: SampleDraws
) -> torch.Tensor:
    """A RandomResizedCrop per image, each a function of (seed, epoch, row)."""
    height, width = images.shape[-2:]
    boxes = [crop_box(rng, height, width, scale) for rng in draws.per_sample("crops")]
    return resized_crops(images, torch.tensor(boxes, dtype=torch.int64))


def random_horizontal_flips(
    images: torch.Tensor, probability: float, draws: SampleDraws
) -> torch.Tensor:
    """Each image mirrored left to right with `probability`, a function of (seed,
    epoch, row) like the crops (which it follows, as in MAE's recipe)."""
    flip = [rng.random() < probability for rng in draws.per_sample("flips")]
    flip = torch.tensor(flip, device=images.device)[:, None, None, None]
    return torch.where(flip, images.flip(-1), images)


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is divided.

    batch_size: the global batch; world_size: data-parallel processes; rank: this one;
    accumulation_steps: micro-batches per process and step."""

    batch_size: int
    world_size: int = 1
    rank: int = 0
    accumulation_steps: int = 1

    def __post_init__(self) -> None:
        parts = self.world_size * self.accumulation_steps
        if self.batch_size % parts:
            raise ValueError(
                f"training.batch_size={self.batch_size} must divide evenly into "
                f"{self.world_size} process(es) x training.accumulation_steps="
                f"{self.accumulation_steps} micro-batches; choose a multiple of {parts}"
            )

    @property
    def per_process(self) -> int:
        return self.batch_size // self.world_size

    @property
    def micro_batch_size(self) -> int:
        return self.per_process // self.accumulation_steps

    def steps_per_epoch(self, num_images: int) -> int:
        return num_images // self.batch_size

    def epoch_rows(self, num_images: int, seed: int, epoch: int) -> torch.Tensor:
        """This process's rows for `epoch`, in order: per-process batches back to back."""
        sampler = DistributedSampler(
            range(num_images),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.int64)

    def micro_batches(
        self, num_images: int, seed: int, epoch: int, first_step: int
    ) -> list[SampleDraws]:
        """Every micro-batch of `epoch` from global step `first_step` (resuming mid-
        epoch) to the epoch's end, in order; micro-batch m of a step is item m."""
        rows = self.epoch_rows(num_images, seed, epoch).numpy()
        split = self.world_size * self.accumulation_steps > 1
        # The sampler deals the epoch's permutation round-robin, so global batch k is
        # positions [k * batch_size, (k + 1) * batch_size) of the undealt permutation.
        everyone = (
            BatchPlan(self.batch_size).epoch_rows(num_images, seed, epoch).numpy()
            if split
            else None
        )
        steps = self.steps_per_epoch(num_images)
        plan = []
        for step in range(max(first_step, epoch * steps), (epoch + 1) * steps):
            in_epoch = step - epoch * steps
            start = in_epoch * self.per_process
            whole = None
            if everyone is not None:
                whole = everyone[in_epoch * self.batch_size : (in_epoch + 1) * self.batch_size]
            for m in range(self.accumulation_steps):
                begin = start + m * self.micro_batch_size
                micro = rows[begin : begin + self.micro_batch_size]
                plan.append(SampleDraws(seed, epoch, step, micro, whole))
        return plan

    def remaining_micro_batches(
        self, num_images: int, seed: int, first_step: int, epochs: int
    ) -> Iterator[SampleDraws]:
        """`micro_batches` of every epoch from global step `first_step` to the end of
        training, made lazily (a long run on a large dataset has millions)."""
        steps = self.steps_per_epoch(num_images)
        for epoch in range(first_step // steps, epochs):
            yield from self.micro_batches(num_images, seed, epoch, first_step)


class MethodInputs(Dataset):
    """Item `draws` -> the method's input tensors for those rows: the images read (and,
    for `NormalizedImages`, normalized), cropped when `crop_scale` is set, mirrored with
    `horizontal_flip_p`, then masked or augmented by the method's `InputSampler`."""

    def __init__(
        self,
        images: torch.Tensor | NormalizedImages,
        input_sampler: InputSampler,
        crop_scale: tuple[float, float] | None,
        horizontal_flip_p: float = 0.0,
    ) -> None:
        self.images = images
        self.input_sampler = input_sampler
        self.crop_scale = crop_scale
        self.horizontal_flip_p = horizontal_flip_p

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, draws: SampleDraws) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(draws.indices)
        if isinstance(self.images, torch.Tensor):
            rows = rows.to(self.images.device)
        batch = self.images[rows]
        if self.crop_scale is not None:
            batch = random_resized_crops(batch, self.crop_scale, draws)
        if self.horizontal_flip_p > 0:
            batch = random_horizontal_flips(batch, self.horizontal_flip_p, draws)
        return self.input_sampler(batch, draws)


def method_inputs(
    dataset: MethodInputs, plan: Iterable[SampleDraws], workers: int, pin_memory: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """The inputs of every micro-batch in `plan`, in order: made by `workers` DataLoader
    processes ahead of the step (masks and augmentations included, off the critical
    path), into pinned memory for asynchronous copies to the GPU; with 0 workers, or
    images already held as a tensor, in this process between steps. The inputs are the
    same whatever the worker count."""
    if workers == 0 or isinstance(dataset.images, torch.Tensor):
        return (dataset[draws] for draws in plan)
    return iter(
        DataLoader(
            dataset,
            sampler=plan,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=2,
        )
    )
