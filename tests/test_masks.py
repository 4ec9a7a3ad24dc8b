"""Multi-block mask sampler: shapes, invariants and failure modes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from selfsup.config import MaskingConfig, MultiBlockConfig
from selfsup.masks import (
    BlockShape,
    MaskSamplingError,
    MultiBlockMaskSampler,
    block_shape,
    measure_mask_statistics,
)
from tests.helpers import block_dim_bounds, expected_block_dims

NUM_BATCHES = 300
BATCH_SIZE = 4

CASES = {
    "paper-8x8": (8, MultiBlockConfig()),
    "paper-14x14": (14, MultiBlockConfig()),
    "two-wide-blocks-10x10": (
        10,
        MultiBlockConfig(
            num_targets=2,
            target_scale=(0.1, 0.3),
            target_aspect_ratio=(0.5, 2.0),
            context_scale=(0.6, 0.9),
            context_aspect_ratio=(0.8, 1.25),
            min_keep=6,
        ),
    ),
}


def rectangle_dims(indices: np.ndarray, grid: int) -> tuple[int, int] | None:
    """(height, width) if `indices` are exactly the patches of one full rectangle."""
    rows, cols = np.divmod(indices, grid)
    height = rows.max() - rows.min() + 1
    width = cols.max() - cols.min() + 1
    expected = {
        r * grid + c
        for r in range(rows.min(), rows.max() + 1)
        for c in range(cols.min(), cols.max() + 1)
    }
    if len(indices) != len(expected) or set(indices.tolist()) != expected:
        return None
    return int(height), int(width)


def context_is_block_minus_targets(
    context: np.ndarray, targets: np.ndarray, grid: int, bounds: tuple[int, int, int, int]
) -> bool:
    """True if some rectangle of an allowed context shape, minus every target patch,
    is exactly `context`."""
    h_min, h_max, w_min, w_max = bounds
    covered = set(targets.ravel().tolist())
    wanted = set(context.tolist())
    for h in range(h_min, h_max + 1):
        for w in range(w_min, w_max + 1):
            for top in range(grid - h + 1):
                for left in range(grid - w + 1):
                    block = {
                        r * grid + c for r in range(top, top + h) for c in range(left, left + w)
                    }
                    if block - covered == wanted:
                        return True
    return False


@pytest.fixture(scope="module", params=sorted(CASES))
def drawn(request):
    """300 batches from one sampler, with the grid and config that drew them."""
    grid, config = CASES[request.param]
    sampler = MultiBlockMaskSampler(grid, config)
    rng = np.random.default_rng(7)
    batches = [sampler.sample(BATCH_SIZE, rng) for _ in range(NUM_BATCHES)]
    return grid, config, batches


def test_array_shapes_and_dtypes(drawn):
    grid, config, batches = drawn
    for masks in batches:
        assert masks.target_indices.ndim == 3
        batch, num_blocks, block_len = masks.target_indices.shape
        assert batch == BATCH_SIZE
        assert num_blocks == config.num_targets
        assert masks.context_indices.shape == masks.context_valid.shape
        assert masks.context_indices.shape[0] == BATCH_SIZE
        assert masks.context_valid.dtype == bool
        # Integer indices that torch.gather accepts once converted.
        assert masks.context_indices.dtype == np.int64
        assert np.issubdtype(masks.target_indices.dtype, np.integer)


def test_indices_in_range(drawn):
    grid, _, batches = drawn
    for masks in batches:
        assert masks.target_indices.min() >= 0
        assert masks.target_indices.max() < grid * grid
        assert masks.context_indices.min() >= 0
        assert masks.context_indices.max() < grid * grid


def test_target_blocks_are_full_rectangles_of_one_shared_shape_within_bounds(drawn):
    grid, config, batches = drawn
    h_min, h_max, w_min, w_max = block_dim_bounds(
        config.target_scale, config.target_aspect_ratio, grid
    )
    shapes_seen = set()
    for masks in batches:
        dims = set()
        for row in masks.target_indices:
            for block in row:
                shape = rectangle_dims(block, grid)
                assert shape is not None, f"target block {block} is not a full rectangle"
                dims.add(shape)
        assert len(dims) == 1, f"blocks of one batch have different shapes {dims}"
        (height, width) = dims.pop()
        assert h_min <= height <= h_max
        assert w_min <= width <= w_max
        assert masks.target_indices.shape[2] == height * width
        shapes_seen.add((height, width))
    # Shapes are drawn per batch, so 300 batches show more than one.
    assert len(shapes_seen) > 1


def test_context_is_padded_prefix_without_target_patches(drawn):
    grid, config, batches = drawn
    for masks in batches:
        lengths = masks.context_valid.sum(axis=1)
        # Padding is only as long as the longest row needs.
        assert lengths.max() == masks.context_indices.shape[1]
        for row in range(BATCH_SIZE):
            valid = masks.context_valid[row]
            n = lengths[row]
            assert valid[:n].all() and not valid[n:].any(), "padding must come last"
            assert (masks.context_indices[row, n:] == 0).all()
            context = masks.context_indices[row][valid]
            assert len(context) >= config.min_keep
            assert len(np.unique(context)) == len(context)
            targets = masks.target_indices[row].ravel()
            assert not np.isin(context, targets).any(), "context patch inside a target"


def test_context_is_a_block_of_allowed_shape_minus_targets(drawn):
    grid, config, batches = drawn
    bounds = block_dim_bounds(config.context_scale, config.context_aspect_ratio, grid)
    for masks in batches[:50]:
        for row in range(BATCH_SIZE):
            context = masks.context_indices[row][masks.context_valid[row]]
            assert context_is_block_minus_targets(context, masks.target_indices[row], grid, bounds)


def test_contexts_differ_in_length_within_a_batch(drawn):
    """Rows are padded, not truncated to the shortest (the official code truncates)."""
    _, _, batches = drawn
    assert any(len(set(m.context_valid.sum(axis=1))) > 1 for m in batches)


def test_same_seed_same_masks_different_seed_different_masks():
    sampler = MultiBlockMaskSampler(8, MultiBlockConfig())

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sampler.sample(4, rng) for _ in range(5)]

    first, again, other = draw(3), draw(3), draw(4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.context_indices, b.context_indices)
        np.testing.assert_array_equal(a.context_valid, b.context_valid)
        np.testing.assert_array_equal(a.target_indices, b.target_indices)
    assert any(
        a.target_indices.shape != b.target_indices.shape
        or not np.array_equal(a.target_indices, b.target_indices)
        or a.context_indices.shape != b.context_indices.shape
        or not np.array_equal(a.context_indices, b.context_indices)
        for a, b in zip(first, other, strict=True)
    )


def test_block_positions_cover_every_valid_corner_including_last_row_and_column():
    grid = 8
    config = MultiBlockConfig(num_targets=1, min_keep=1)
    sampler = MultiBlockMaskSampler(grid, config)
    shape = BlockShape(2, 3)
    rng = np.random.default_rng(0)
    tops, lefts = set(), set()
    for _ in range(400):
        _, blocks, _ = sampler.sample_one(rng, shape)
        rows, cols = np.divmod(blocks[0], grid)
        tops.add(int(rows.min()))
        lefts.add(int(cols.min()))
    assert tops == set(range(grid - shape.height + 1))
    assert lefts == set(range(grid - shape.width + 1))


@pytest.mark.parametrize("grid", [8, 14])
@pytest.mark.parametrize("scale", [0.01, 0.15, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("aspect_ratio", [0.25, 0.75, 1.0, 1.5, 4.0])
def test_block_shape_matches_formula(grid, scale, aspect_ratio):
    shape = block_shape(scale, aspect_ratio, grid)
    assert (shape.height, shape.width) == expected_block_dims(scale, aspect_ratio, grid)
    assert 1 <= shape.height <= grid and 1 <= shape.width <= grid
    assert shape.area == shape.height * shape.width


@pytest.mark.parametrize("grid", [8, 14])
def test_measure_mask_statistics(grid):
    config = MultiBlockConfig()
    sampler = MultiBlockMaskSampler(grid, config)
    stats = measure_mask_statistics(sampler, num_masks=300, seed=0)
    n = grid * grid
    assert stats["num_masks"] == 300
    assert stats["num_patches"] == n
    assert stats["grid"] == [grid, grid]
    assert stats["num_targets"] == config.num_targets
    assert stats["context_patches_inside_targets"] == 0
    summaries = [
        "target_block_scale",
        "target_block_aspect_ratio",
        "context_scale_before_removal",
        "context_fraction_after_removal",
    ]
    for key in summaries:
        s = stats[key]
        assert s["min"] <= s["mean"] <= s["max"], key
    h_min, h_max, w_min, w_max = block_dim_bounds(
        config.target_scale, config.target_aspect_ratio, grid
    )
    assert stats["target_block_scale"]["min"] >= h_min * w_min / n
    assert stats["target_block_scale"]["max"] <= h_max * w_max / n
    assert stats["target_block_aspect_ratio"]["min"] >= h_min / w_max
    assert stats["target_block_aspect_ratio"]["max"] <= h_max / w_min
    assert stats["context_fraction_after_removal"]["min"] >= config.min_keep / n
    # Removing targets can only shrink the context.
    assert (
        stats["context_fraction_after_removal"]["mean"]
        < stats["context_scale_before_removal"]["mean"]
    )
    # Deterministic given the seed.
    assert measure_mask_statistics(sampler, num_masks=300, seed=0) == stats


IMPOSSIBLE = {
    "min_keep close to num_patches": MultiBlockConfig(min_keep=60),
    "huge targets, many of them": MultiBlockConfig(num_targets=16, target_scale=(0.9, 1.0)),
}


@pytest.mark.parametrize("name", sorted(IMPOSSIBLE))
def test_check_feasible_raises_for_impossible_settings(name):
    config = IMPOSSIBLE[name]
    sampler = MultiBlockMaskSampler(8, config)
    with pytest.raises(MaskSamplingError, match="min_keep"):
        sampler.check_feasible()
    with pytest.raises(MaskSamplingError, match="min_keep"):
        sampler.sample(2, np.random.default_rng(0))
    with pytest.raises(ValidationError, match="min_keep"):
        MaskingConfig(image_size=32, patch_size=4, multiblock=config)


def test_check_feasible_passes_for_paper_defaults():
    MultiBlockMaskSampler(8, MultiBlockConfig()).check_feasible()
    MultiBlockMaskSampler(14, MultiBlockConfig()).check_feasible()


def test_settings_accepted_by_validation_can_always_be_sampled():
    """Either validation rejects these settings or every batch can be drawn."""
    config = MultiBlockConfig(
        num_targets=4, target_scale=(0.6, 0.6), target_aspect_ratio=(1.0, 2.0), min_keep=16
    )
    try:
        MaskingConfig(image_size=32, patch_size=4, multiblock=config)
    except ValidationError:
        return  # rejected up front: the other correct outcome
    sampler = MultiBlockMaskSampler(8, config)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sampler.sample(64, rng)
