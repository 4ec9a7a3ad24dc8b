"""Patch masks for masked-prediction pretraining.

Patches are indexed row-major on a square `grid x grid` patch grid, the order in which
timm's `PatchEmbed` flattens them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from selfsup.config import MultiBlockConfig


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


class MultiBlockMaskSampler:
    """I-JEPA multi-block masks: M target blocks and one context block minus targets.

    Follows the paper: targets are M blocks with scale in `target_scale` and aspect ratio
    in `target_aspect_ratio` (they may overlap each other); the context is one block with
    scale in `context_scale` and aspect ratio in `context_aspect_ratio`, from which every
    target patch is removed; a mask whose context keeps fewer than `min_keep` patches is
    redrawn.

    Relation to the official code's quirks:
    - kept: the target block shape (height x width) is drawn once per batch and shared by
      all M blocks of all images, so targets stack into one (B, M, Lt) tensor without
      padding. Positions are drawn per image and per block.
    - fixed: the context shape is drawn per image, not per batch.
    - fixed: scale and aspect ratio are drawn independently (the official code uses one
      random number for both, which couples large blocks with tall ones).
    - fixed: the top-left corner ranges over every valid position, the last row and
      column included (the official upper bound excludes them).
    - fixed: contexts of different lengths are padded and masked in attention instead of
      being truncated to the shortest in the batch, which biased kept patches toward
      the top-left of the image.
    """

    def __init__(self, grid: int, config: MultiBlockConfig) -> None:
        self.grid = grid
        self.config = config

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def draw_shape(self, rng: np.random.Generator, scale: tuple, aspect_ratio: tuple) -> BlockShape:
        return block_shape(rng.uniform(*scale), rng.uniform(*aspect_ratio), self.grid)

    def _place(self, rng: np.random.Generator, shape: BlockShape) -> np.ndarray:
        """Boolean (grid, grid) mask of one block at a uniformly random position."""
        top = rng.integers(0, self.grid - shape.height + 1)
        left = rng.integers(0, self.grid - shape.width + 1)
        mask = np.zeros((self.grid, self.grid), dtype=bool)
        mask[top : top + shape.height, left : left + shape.width] = True
        return mask

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
        target_shape = self.draw_shape(
            rng, self.config.target_scale, self.config.target_aspect_ratio
        )
        contexts, targets = [], []
        for _ in range(batch_size):
            context, blocks, _ = self.sample_one(rng, target_shape)
            contexts.append(context)
            targets.append(np.stack(blocks))
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

        def extreme(scale: tuple, aspect: tuple, pick) -> BlockShape:
            # Rounding makes area non-monotone in aspect ratio: scan the range.
            shapes = [block_shape(scale, a, self.grid) for a in np.linspace(*aspect, 33)]
            return pick(shapes, key=lambda shape: shape.area)

        largest_target = extreme(cfg.target_scale[1], cfg.target_aspect_ratio, max)
        smallest_context = extreme(cfg.context_scale[0], cfg.context_aspect_ratio, min)
        rng = np.random.default_rng(seed)
        for _ in range(num_masks):
            self.sample_one(rng, largest_target, smallest_context)


def measure_mask_statistics(sampler: MultiBlockMaskSampler, num_masks: int, seed: int) -> dict:
    """Summary of `num_masks` masks drawn one image at a time (sizes drawn per mask)."""
    rng = np.random.default_rng(seed)
    cfg = sampler.config
    n = sampler.num_patches
    target_scales, target_aspects, context_scales, context_fractions = [], [], [], []
    overlap = 0
    for _ in range(num_masks):
        shape = sampler.draw_shape(rng, cfg.target_scale, cfg.target_aspect_ratio)
        context, blocks, context_shape = sampler.sample_one(rng, shape)
        target_scales += [shape.area / n] * len(blocks)
        target_aspects += [shape.height / shape.width] * len(blocks)
        context_scales.append(context_shape.area / n)
        context_fractions.append(len(context) / n)
        overlap += int(np.isin(context, np.concatenate(blocks)).sum())

    def summary(values: list[float]) -> dict:
        return {
            "min": float(np.min(values)),
            "mean": float(np.mean(values)),
            "max": float(np.max(values)),
        }

    return {
        "strategy": "multiblock",
        "num_masks": num_masks,
        "grid": [sampler.grid, sampler.grid],
        "num_patches": n,
        "num_targets": cfg.num_targets,
        "min_keep": cfg.min_keep,
        "target_block_scale": summary(target_scales),
        "target_block_aspect_ratio": summary(target_aspects),
        "context_scale_before_removal": summary(context_scales),
        "context_fraction_after_removal": summary(context_fractions),
        "context_patches_inside_targets": overlap,
    }
