"""Patch masks for masked-prediction pretraining.

Patches are indexed row-major on a square `grid x grid` patch grid, the order in which
timm's `PatchEmbed` flattens them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import Field, field_validator, model_validator

from selfsup.params import FloatRange, StrictModel, check_range
from selfsup.randomness import SampleDraws


class MultiBlockConfig(StrictModel):
    """I-JEPA multi-block masking; defaults are the paper's (Assran et al., 2023)."""

    num_targets: int = Field(4, ge=1, le=16)
    target_scale: FloatRange = (0.15, 0.2)
    target_aspect_ratio: FloatRange = (0.75, 1.5)
    context_scale: FloatRange = (0.85, 1.0)
    context_aspect_ratio: FloatRange = (1.0, 1.0)
    min_keep: int = Field(4, ge=1)
    max_tries: int = Field(100, ge=1)
    # per_image: every context keeps its own patches; batch_min: each context is
    # subsampled at random to the shortest of its batch (selfsup.masks).
    context_length: Literal["per_image", "batch_min"] = "per_image"

    @field_validator("target_scale", "context_scale")
    @classmethod
    def _scale_in_unit_interval(cls, value: FloatRange, info) -> FloatRange:
        return check_range(f"multiblock.{info.field_name}", value, 0.0, 1.0)

    @field_validator("target_aspect_ratio", "context_aspect_ratio")
    @classmethod
    def _positive_aspect_ratio(cls, value: FloatRange, info) -> FloatRange:
        return check_range(f"multiblock.{info.field_name}", value, 0.0, math.inf, high_open=True)


class BlockMaskConfig(StrictModel):
    """The paper's `block` ablation: one target block (average 0.6 of the image),
    context = its complement."""

    target_scale: FloatRange = (0.6, 0.6)
    target_aspect_ratio: FloatRange = (0.75, 1.5)

    @field_validator("target_scale")
    @classmethod
    def _scale_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        return check_range("block.target_scale", value, 0.0, 1.0)

    @field_validator("target_aspect_ratio")
    @classmethod
    def _positive_aspect_ratio(cls, value: FloatRange) -> FloatRange:
        return check_range("block.target_aspect_ratio", value, 0.0, math.inf, high_open=True)


class RandomMaskConfig(StrictModel):
    """The paper's `random` ablation: this fraction of patches, drawn at random, is the
    target; the rest is the context."""

    target_ratio: float = Field(0.6, gt=0, lt=1)


MaskingStrategy = Literal["multiblock", "rasterized", "block", "random"]


class MaskingConfig(StrictModel):
    """Image size, patch grid and the I-JEPA mask sampler.

    `strategy` selects the sampler; each strategy reads only its own block
    (`multiblock`, `block`, `random`; `rasterized` has no parameters).
    """

    image_size: int = Field(32, ge=1)
    patch_size: int = Field(4, ge=1)
    strategy: MaskingStrategy = "multiblock"
    multiblock: MultiBlockConfig = MultiBlockConfig()
    block: BlockMaskConfig = BlockMaskConfig()
    random: RandomMaskConfig = RandomMaskConfig()
    preview_images: int = Field(6, ge=1, le=32)
    stats_num_masks: int = Field(2000, ge=1)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @model_validator(mode="after")
    def _grid_and_masks_are_feasible(self) -> MaskingConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"masking.image_size={self.image_size} is not divisible by "
                f"masking.patch_size={self.patch_size}; pick sizes such that "
                "image_size % patch_size == 0"
            )
        if self.grid_size < 2:
            raise ValueError(
                f"masking.image_size / masking.patch_size = {self.grid_size}: the patch "
                "grid needs at least 2x2 patches (8x8 or more recommended)"
            )
        if self.strategy == "multiblock" and self.multiblock.min_keep >= self.num_patches:
            raise ValueError(
                f"masking.multiblock.min_keep={self.multiblock.min_keep} must be below the "
                f"number of patches ({self.num_patches})"
            )
        try:
            build_mask_sampler(self).check_feasible()
        except MaskSamplingError as error:
            raise ValueError(str(error)) from None
        return self


class MaskSamplingError(ValueError):
    """The mask parameters cannot produce a valid mask."""


@dataclass(frozen=True)
class MaskBatch:
    """Masks for one batch.

    context_indices: (B, Lc) patch indices seen by the context encoder, padded per row
        with index 0 where `context_valid` is False (rows differ in length).
    context_valid: (B, Lc) True for real context patches.
    target_indices: (B, M, Lt) patch indices of each of the M target blocks.
    """

    context_indices: np.ndarray
    context_valid: np.ndarray
    target_indices: np.ndarray


@dataclass(frozen=True)
class BlockShape:
    height: int
    width: int

    @property
    def area(self) -> int:
        return self.height * self.width


def block_shape(scale: float, aspect_ratio: float, grid: int) -> BlockShape:
    """Block of about `scale * grid**2` patches with height/width = `aspect_ratio`."""
    patches = scale * grid * grid
    height = round(math.sqrt(patches * aspect_ratio))
    width = round(math.sqrt(patches / aspect_ratio))
    return BlockShape(min(max(height, 1), grid), min(max(width, 1), grid))


def draw_block_shape(
    rng: np.random.Generator, scale: tuple, aspect_ratio: tuple, grid: int
) -> BlockShape:
    """Scale and aspect ratio drawn independently and uniformly from their ranges."""
    return block_shape(rng.uniform(*scale), rng.uniform(*aspect_ratio), grid)


def place_block(rng: np.random.Generator, shape: BlockShape, grid: int) -> np.ndarray:
    """Boolean (grid, grid) mask of one block at a uniformly random position."""
    top = rng.integers(0, grid - shape.height + 1)
    left = rng.integers(0, grid - shape.width + 1)
    mask = np.zeros((grid, grid), dtype=bool)
    mask[top : top + shape.height, left : left + shape.width] = True
    return mask


def extreme_block(scale: float, aspect_ratio: tuple, grid: int, pick=max) -> BlockShape:
    """The largest (`pick=max`) or smallest area shape of `scale` over the aspect-ratio
    range, exactly.

    Rounding makes area non-monotone in aspect ratio, but height and width only change
    where sqrt(scale * N * a) or sqrt(scale * N / a) crosses a half-integer, so the
    shape is constant between those breakpoints: checking the range's ends, every
    breakpoint inside it and one aspect ratio between each pair covers every shape.
    """
    low, high = aspect_ratio
    patches = scale * grid * grid
    halves = (np.arange(grid + 1) + 0.5) ** 2
    breakpoints = np.concatenate([halves / patches, patches / halves])
    inside = np.sort(breakpoints[(breakpoints > low) & (breakpoints < high)])
    edges = np.concatenate([[low], inside, [high]])
    candidates = np.concatenate([edges, (edges[:-1] + edges[1:]) / 2])
    shapes = [block_shape(scale, a, grid) for a in candidates]
    return pick(shapes, key=lambda shape: shape.area)


class MultiBlockMaskSampler:
    """I-JEPA multi-block masks: M target blocks and one context block minus targets.

    Follows the paper: targets are M blocks with scale in `target_scale` and aspect ratio
    in `target_aspect_ratio` (they may overlap each other); the context is one block with
    scale in `context_scale` and aspect ratio in `context_aspect_ratio`, from which every
    target patch is removed; a mask whose context keeps fewer than `min_keep` patches is
    redrawn.

    Relation to the official code's quirks:
    - kept: the target block shape (height x width) is drawn once per step (from the
      step's own generator, so every micro-batch and process of a global batch agrees)
      and shared by all M blocks of all images, so targets stack into one (B, M, Lt)
      tensor without padding. Positions are drawn per image and per block, from the
      image's own generator (`selfsup.randomness`).
    - fixed: the context shape is drawn per image, not per batch.
    - fixed: scale and aspect ratio are drawn independently (the official code uses one
      random number for both, which couples large blocks with tall ones).
    - fixed: the top-left corner ranges over every valid position, the last row and
      column included (the official upper bound excludes them).
    - fixed: contexts of different lengths are kept whole (`context_length: per_image`)
      instead of being truncated to the shortest in the batch, which biased kept patches
      toward the top-left of the image. `context_length: batch_min` gives the official
      code's compute without that bias: each context is subsampled at random to the
      shortest of the global batch (`sample_masks`).
    """

    strategy = "multiblock"

    def __init__(self, grid: int, config: MultiBlockConfig) -> None:
        self.grid = grid
        self.config = config

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def draw_shape(self, rng: np.random.Generator, scale: tuple, aspect_ratio: tuple) -> BlockShape:
        return draw_block_shape(rng, scale, aspect_ratio, self.grid)

    def _place(self, rng: np.random.Generator, shape: BlockShape) -> np.ndarray:
        return place_block(rng, shape, self.grid)

    def sample_one(
        self,
        rng: np.random.Generator,
        target_shape: BlockShape,
        context_shape: BlockShape | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray], BlockShape]:
        """Context indices, M target index arrays and the context block's shape.

        The context shape is drawn per try unless `context_shape` fixes it.
        """
        cfg = self.config
        for _ in range(cfg.max_tries):
            targets = [self._place(rng, target_shape) for _ in range(cfg.num_targets)]
            if context_shape is None:
                shape = self.draw_shape(rng, cfg.context_scale, cfg.context_aspect_ratio)
            else:
                shape = context_shape
            context = self._place(rng, shape) & ~np.any(targets, axis=0)
            if context.sum() >= cfg.min_keep:
                return (
                    np.flatnonzero(context),
                    [np.flatnonzero(t) for t in targets],
                    shape,
                )
        raise MaskSamplingError(
            f"no mask in {cfg.max_tries} tries left masking.multiblock.min_keep="
            f"{cfg.min_keep} context patches with target block "
            f"{target_shape.height}x{target_shape.width} on a {self.grid}x{self.grid} "
            f"grid; lower min_keep, num_targets={cfg.num_targets} or "
            f"target_scale={list(cfg.target_scale)}, or raise context_scale="
            f"{list(cfg.context_scale)}"
        )

    def sample(self, batch_size: int, rng: np.random.Generator) -> MaskBatch:
        return self.sample_rows(rng, [rng] * batch_size)

    def sample_rows(
        self, batch_rng: np.random.Generator, row_rngs: Sequence[np.random.Generator]
    ) -> MaskBatch:
        target_shape = self.draw_shape(
            batch_rng, self.config.target_scale, self.config.target_aspect_ratio
        )
        contexts, targets = [], []
        for rng in row_rngs:
            context, blocks, _ = self.sample_one(rng, target_shape)
            contexts.append(context)
            targets.append(np.stack(blocks))
        batch_size = len(row_rngs)
        longest = max(len(c) for c in contexts)
        context_indices = np.zeros((batch_size, longest), dtype=np.int64)
        context_valid = np.zeros((batch_size, longest), dtype=bool)
        for row, context in enumerate(contexts):
            context_indices[row, : len(context)] = context
            context_valid[row, : len(context)] = True
        return MaskBatch(context_indices, context_valid, np.stack(targets))

    def check_feasible(self, num_masks: int = 64, seed: int = 0) -> None:
        """Fail early, with a message naming the parameters, if masks cannot be drawn.

        Draws the hardest case (the largest-area target block with the smallest-area
        context block the ranges allow) `num_masks` times: a sampler that cannot reach
        `min_keep` there would only fail now and then in training.
        """
        cfg = self.config

        largest_target = extreme_block(cfg.target_scale[1], cfg.target_aspect_ratio, self.grid)
        smallest_context = extreme_block(
            cfg.context_scale[0], cfg.context_aspect_ratio, self.grid, min
        )
        rng = np.random.default_rng(seed)
        for _ in range(num_masks):
            self.sample_one(rng, largest_target, smallest_context)


def _fixed_length_batch(contexts: list[np.ndarray], targets: list[np.ndarray]) -> MaskBatch:
    """Masks whose contexts all have one length: no padding needed."""
    context_indices = np.stack(contexts).astype(np.int64)
    return MaskBatch(
        context_indices,
        np.ones_like(context_indices, dtype=bool),
        np.stack(targets).astype(np.int64),
    )


def _complement(grid: int, target: np.ndarray) -> np.ndarray:
    """Sorted indices of the patches not in `target`."""
    return np.setdiff1d(np.arange(grid * grid), target)


class RasterizedMaskSampler:
    """The paper's rasterized ablation: one quadrant (drawn per image) is the context,
    the other three quadrants are three targets."""

    strategy = "rasterized"

    def __init__(self, grid: int) -> None:
        if grid % 2:
            raise MaskSamplingError(
                f"masking.strategy=rasterized splits the patch grid into equal quadrants, "
                f"but the grid is {grid}x{grid}; choose image_size / patch_size even"
            )
        self.grid = grid
        half = grid // 2
        rows, cols = np.divmod(np.arange(grid * grid), grid)
        quadrant = (rows >= half) * 2 + (cols >= half)
        self.quadrants = [np.flatnonzero(quadrant == q) for q in range(4)]

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def sample(self, batch_size: int, rng: np.random.Generator) -> MaskBatch:
        return self._quadrant_masks(rng.integers(0, 4, size=batch_size))

    def sample_rows(
        self, batch_rng: np.random.Generator, row_rngs: Sequence[np.random.Generator]
    ) -> MaskBatch:
        return self._quadrant_masks([rng.integers(0, 4) for rng in row_rngs])

    def _quadrant_masks(self, context_quadrants) -> MaskBatch:
        contexts, targets = [], []
        for context in context_quadrants:
            contexts.append(self.quadrants[context])
            targets.append(np.stack([self.quadrants[q] for q in range(4) if q != context]))
        return _fixed_length_batch(contexts, targets)

    def check_feasible(self) -> None:
        """Every grid that passed the constructor works."""


class BlockMaskSampler:
    """The paper's block ablation: one large target block, context = its complement.

    As in multi-block masking, the block shape is drawn once per batch (so every row has
    the same number of context and target patches) and its position per image.
    """

    strategy = "block"

    def __init__(self, grid: int, config: BlockMaskConfig) -> None:
        self.grid = grid
        self.config = config

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def sample(self, batch_size: int, rng: np.random.Generator) -> MaskBatch:
        return self.sample_rows(rng, [rng] * batch_size)

    def sample_rows(
        self, batch_rng: np.random.Generator, row_rngs: Sequence[np.random.Generator]
    ) -> MaskBatch:
        cfg = self.config
        shape = draw_block_shape(batch_rng, cfg.target_scale, cfg.target_aspect_ratio, self.grid)
        contexts, targets = [], []
        for rng in row_rngs:
            target = np.flatnonzero(place_block(rng, shape, self.grid))
            contexts.append(_complement(self.grid, target))
            targets.append(target[None])
        return _fixed_length_batch(contexts, targets)

    def check_feasible(self) -> None:
        largest = extreme_block(
            self.config.target_scale[1], self.config.target_aspect_ratio, self.grid
        )
        if largest.area >= self.num_patches:
            raise MaskSamplingError(
                f"masking.block.target_scale={list(self.config.target_scale)} can cover the "
                f"whole {self.grid}x{self.grid} grid and leave no context; lower its upper end"
            )


class RandomMaskSampler:
    """The paper's random ablation: a random set of target patches (one target),
    context = the complement."""

    strategy = "random"

    def __init__(self, grid: int, config: RandomMaskConfig) -> None:
        self.grid = grid
        self.config = config

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_target_patches(self) -> int:
        return round(self.config.target_ratio * self.num_patches)

    def sample(self, batch_size: int, rng: np.random.Generator) -> MaskBatch:
        return self.sample_rows(rng, [rng] * batch_size)

    def sample_rows(
        self, batch_rng: np.random.Generator, row_rngs: Sequence[np.random.Generator]
    ) -> MaskBatch:
        contexts, targets = [], []
        for rng in row_rngs:
            target = np.sort(rng.permutation(self.num_patches)[: self.num_target_patches])
            contexts.append(_complement(self.grid, target))
            targets.append(target[None])
        return _fixed_length_batch(contexts, targets)

    def check_feasible(self) -> None:
        if not 1 <= self.num_target_patches < self.num_patches:
            raise MaskSamplingError(
                f"masking.random.target_ratio={self.config.target_ratio} gives "
                f"{self.num_target_patches} target patches of {self.num_patches}; "
                "it must leave at least one target and one context patch"
            )


class MaskSampler(Protocol):
    """What I-JEPA and the masking reports need from a sampler."""

    grid: int

    def sample(self, batch_size: int, rng: np.random.Generator) -> MaskBatch: ...

    def sample_rows(
        self, batch_rng: np.random.Generator, row_rngs: Sequence[np.random.Generator]
    ) -> MaskBatch:
        """Masks drawn row by row from `row_rngs`; what rows share (a block shape) from
        `batch_rng`. `sample(n, rng)` is `sample_rows(rng, [rng] * n)`."""
        ...

    def check_feasible(self) -> None: ...


def sample_masks(sampler: MaskSampler, draws: SampleDraws) -> MaskBatch:
    """The masks of one (micro-)batch: each row's a function of (seed, epoch, row),
    the shared block shape a function of (seed, step).

    With multi-block `context_length: batch_min`, every context is then subsampled to
    the shortest context of the step's global batch, keeping a uniformly random subset
    of its patches (drawn per row from their own stream, so the masks before
    subsampling are those of `per_image`). The shortest is over the global batch, so
    the masks do not depend on how it is split into micro-batches or processes; a part
    of a batch draws the rest's masks to find it.
    """
    masks = sampler.sample_rows(draws.for_batch("masks"), draws.per_sample("masks"))
    if not isinstance(sampler, MultiBlockMaskSampler):
        return masks
    if sampler.config.context_length == "per_image":
        return masks
    shortest = int(masks.context_valid.sum(axis=1).min())
    rest = draws.rest_of_batch()
    if len(rest):
        others = sampler.sample_rows(draws.for_batch("masks"), draws.for_rows("masks", rest))
        shortest = min(shortest, int(others.context_valid.sum(axis=1).min()))
    return subsample_contexts(masks, shortest, draws.per_sample("context_subsample"))


def subsample_contexts(
    masks: MaskBatch, length: int, rngs: Sequence[np.random.Generator]
) -> MaskBatch:
    """Each row's context cut to `length` patches chosen uniformly at random (kept in
    raster order), one generator per row; targets unchanged."""
    contexts = []
    for indices, valid, rng in zip(masks.context_indices, masks.context_valid, rngs, strict=True):
        patches = indices[valid]
        contexts.append(np.sort(rng.choice(patches, size=length, replace=False)))
    return _fixed_length_batch(contexts, list(masks.target_indices))


def build_mask_sampler(masking: MaskingConfig) -> MaskSampler:
    """The sampler of `masking.strategy`."""
    grid = masking.grid_size
    if masking.strategy == "multiblock":
        return MultiBlockMaskSampler(grid, masking.multiblock)
    if masking.strategy == "rasterized":
        return RasterizedMaskSampler(grid)
    if masking.strategy == "block":
        return BlockMaskSampler(grid, masking.block)
    if masking.strategy == "random":
        return RandomMaskSampler(grid, masking.random)
    raise ValueError(f"unknown masking.strategy {masking.strategy!r}")


def _summary(values: list[float]) -> dict:
    return {
        "min": float(np.min(values)),
        "mean": float(np.mean(values)),
        "max": float(np.max(values)),
    }


def measure_mask_statistics(sampler: MaskSampler, num_masks: int, seed: int) -> dict:
    """Summary of `num_masks` masks drawn one image at a time (block sizes drawn per
    mask), for any strategy; multi-block masks add their block-shape statistics."""
    rng = np.random.default_rng(seed)
    n = sampler.grid * sampler.grid
    context_fractions, target_fractions, block_sizes = [], [], []
    overlap = 0
    num_targets = 0
    for _ in range(num_masks):
        masks = sampler.sample(1, rng)
        context = masks.context_indices[0][masks.context_valid[0]]
        blocks = masks.target_indices[0]
        num_targets = len(blocks)
        union = np.unique(blocks)
        context_fractions.append(len(context) / n)
        target_fractions.append(len(union) / n)
        block_sizes += [blocks.shape[1] / n] * len(blocks)
        overlap += int(np.isin(context, union).sum())
    stats = {
        "strategy": getattr(sampler, "strategy", type(sampler).__name__),
        "num_masks": num_masks,
        "grid": [sampler.grid, sampler.grid],
        "num_patches": n,
        "num_targets": num_targets,
        "target_block_fraction": _summary(block_sizes),
        "target_union_fraction": _summary(target_fractions),
        "context_fraction": _summary(context_fractions),
        "context_patches_inside_targets": overlap,
    }
    if isinstance(sampler, MultiBlockMaskSampler):
        stats.update(_multiblock_shape_statistics(sampler, num_masks, seed))
    return stats


def _multiblock_shape_statistics(sampler: MultiBlockMaskSampler, num_masks: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cfg = sampler.config
    n = sampler.num_patches
    target_scales, target_aspects, context_scales, context_fractions = [], [], [], []
    for _ in range(num_masks):
        shape = sampler.draw_shape(rng, cfg.target_scale, cfg.target_aspect_ratio)
        context, blocks, context_shape = sampler.sample_one(rng, shape)
        target_scales += [shape.area / n] * len(blocks)
        target_aspects += [shape.height / shape.width] * len(blocks)
        context_scales.append(context_shape.area / n)
        context_fractions.append(len(context) / n)
    return {
        "min_keep": cfg.min_keep,
        "target_block_scale": _summary(target_scales),
        "target_block_aspect_ratio": _summary(target_aspects),
        "context_scale_before_removal": _summary(context_scales),
        "context_fraction_after_removal": _summary(context_fractions),
    }
