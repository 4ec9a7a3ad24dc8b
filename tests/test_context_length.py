"""I-JEPA's `context_length: batch_min`: contexts subsampled to the batch's shortest."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.batches import BatchPlan
from selfsup.config import MaskingConfig
from selfsup.masks import MaskBatch, build_mask_sampler, sample_masks
from selfsup.randomness import SampleDraws


def sampler_with(context_length: str, num_targets: int = 4):
    masking = MaskingConfig(
        image_size=32,
        patch_size=4,
        multiblock={"num_targets": num_targets, "context_length": context_length},
    )
    return build_mask_sampler(masking)


def contexts(masks: MaskBatch) -> list[np.ndarray]:
    return [
        idx[valid] for idx, valid in zip(masks.context_indices, masks.context_valid, strict=True)
    ]


def test_every_context_is_cut_to_the_shortest_from_its_own_patches():
    draws = SampleDraws(7, 2, 11, np.arange(100, 164))
    whole = sample_masks(sampler_with("per_image"), draws)
    cut = sample_masks(sampler_with("batch_min"), draws)
    shortest = min(len(c) for c in contexts(whole))
    assert max(len(c) for c in contexts(whole)) > shortest  # the cut does something
    assert cut.context_indices.shape == (64, shortest)
    assert cut.context_valid.all()
    for kept, full in zip(contexts(cut), contexts(whole), strict=True):
        assert len(np.unique(kept)) == shortest
        assert np.isin(kept, full).all()
        assert np.array_equal(kept, np.sort(kept))
    np.testing.assert_array_equal(cut.target_indices, whole.target_indices)


@pytest.mark.parametrize(("world_size", "accumulation"), [(1, 4), (2, 2), (4, 1)])
def test_masks_do_not_depend_on_how_the_batch_is_split(world_size, accumulation):
    """Every micro-batch of every process finds the global batch's shortest context, so
    each row gets the mask it gets when the batch is drawn whole."""
    sampler = sampler_with("batch_min")
    num_images, batch_size, seed, epoch = 256, 32, 3, 1
    whole_plan = BatchPlan(batch_size).micro_batches(num_images, seed, epoch, 0)
    expected = {}
    for draws in whole_plan[:3]:
        masks = sample_masks(sampler, draws)
        for row, context in zip(draws.indices, contexts(masks), strict=True):
            expected[(draws.step, int(row))] = context
    for rank in range(world_size):
        plan = BatchPlan(batch_size, world_size, rank, accumulation)
        for draws in plan.micro_batches(num_images, seed, epoch, 0)[: 3 * accumulation]:
            masks = sample_masks(sampler, draws)
            for row, context in zip(draws.indices, contexts(masks), strict=True):
                np.testing.assert_array_equal(context, expected[(draws.step, int(row))])


def kept_frequency(masks_list: list[MaskBatch]) -> np.ndarray:
    counts = np.zeros(64)
    for masks in masks_list:
        for context in contexts(masks):
            counts[context] += 1
    return counts


def test_kept_positions_carry_no_top_left_bias():
    """Subsampling keeps each patch of a context with the same probability, so a
    position's chance of being kept is its chance of being in the context times one
    constant. Truncating to the first patches in raster order (the official code) is
    shown failing the same check."""
    per_image, batch_min = sampler_with("per_image"), sampler_with("batch_min")
    before, after, truncated = [], [], []
    for step in range(60):
        draws = SampleDraws(0, 0, step, np.arange(step * 64, (step + 1) * 64))
        whole = sample_masks(per_image, draws)
        before.append(whole)
        after.append(sample_masks(batch_min, draws))
        shortest = min(len(c) for c in contexts(whole))
        rows = np.stack([c[:shortest] for c in contexts(whole)])
        truncated.append(MaskBatch(rows, np.ones_like(rows, dtype=bool), whole.target_indices))
    in_context = kept_frequency(before)
    for masks_list, biased in ((after, False), (truncated, True)):
        ratio = kept_frequency(masks_list) / in_context
        rows_mean = ratio.reshape(8, 8).mean(axis=1)
        # Top half against bottom half of the grid, relative to the mean ratio.
        shift = (rows_mean[:4].mean() - rows_mean[4:].mean()) / ratio.mean()
        if biased:
            assert shift > 0.3
        else:
            assert abs(shift) < 0.05
            assert ratio.std() / ratio.mean() < 0.1


def test_other_strategies_ignore_the_setting():
    masking = MaskingConfig(image_size=32, patch_size=4, strategy="random")
    masks = sample_masks(build_mask_sampler(masking), SampleDraws(0, 0, 0, np.arange(8)))
    assert masks.context_valid.all()
