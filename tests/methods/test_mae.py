"""MAE: masking, unshuffling, patchify, and a loss over masked patches only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig, TrainingConfig
from selfsup.methods import METHODS, build_method
from selfsup.methods.mae import MAE, masked_patch_loss, patchify, random_masking
from selfsup.randomness import SampleDraws
from selfsup.training import train

ENCODER = EncoderConfig(embed_dim=32, depth=1, num_heads=2)
MASKING = MaskingConfig(image_size=16, patch_size=2)  # 8x8 grid


def tiny_mae(**hyperparameters) -> MAE:
    torch.manual_seed(0)
    return build_method("mae", hyperparameters, ENCODER, MASKING, in_chans=3)


def test_registered_and_validated_by_name():
    assert METHODS["mae"] is MAE
    with pytest.raises(ValueError, match="mask_ratio"):
        PretrainingConfig(method="mae", hyperparameters={"mask_ratio": 1.5})
    with pytest.raises(ValueError, match="no visible patch"):
        tiny_mae(mask_ratio=0.999)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_random_masking_keeps_exactly_int_n_times_one_minus_r(ratio):
    n = 64
    kept, restore = random_masking(n, ratio, [np.random.default_rng(0)] * 16)
    assert kept.shape == (16, int(n * (1 - ratio)))
    for row in range(16):
        assert len(set(kept[row].tolist())) == kept.shape[1]
        # restore inverts the shuffle: the first K shuffled positions are the kept ones.
        shuffled_position_of = restore[row]
        assert sorted(shuffled_position_of[kept[row]].tolist()) == list(range(kept.shape[1]))
    assert sorted(restore[0].tolist()) == list(range(n))


def test_random_masking_is_a_function_of_each_rows_rng():
    def rngs(*seeds):
        return [np.random.default_rng(seed) for seed in seeds]

    a = random_masking(64, 0.75, rngs(3, 5, 7))
    b = random_masking(64, 0.75, rngs(3, 5, 7))
    c = random_masking(64, 0.75, rngs(4, 5, 7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Row i depends on its own generator only.
    assert not torch.equal(a[0][0], c[0][0])
    assert torch.equal(a[0][1:], c[0][1:])


def test_unshuffle_puts_visible_tokens_back_at_their_patch_and_mask_tokens_elsewhere():
    decoder = tiny_mae().decoder
    n, dim = 64, decoder.mask_token.shape[-1]
    kept, restore = random_masking(n, 0.75, [np.random.default_rng(1)] * 3)
    # Token of patch p carries the value p in every channel, so its place is checkable.
    visible = kept[..., None].float().expand(-1, -1, dim)
    full = decoder.unshuffle(visible, restore)
    assert full.shape == (3, n, dim)
    for row in range(3):
        kept_set = set(kept[row].tolist())
        for patch in range(n):
            if patch in kept_set:
                assert torch.all(full[row, patch] == patch)
            else:
                torch.testing.assert_close(full[row, patch], decoder.mask_token[0, 0])


def test_patchify_matches_slicing_row_major():
    images = torch.randn(2, 3, 16, 16)
    patches = patchify(images, 2)
    assert patches.shape == (2, 64, 12)
    for index in (0, 9, 63):
        row, col = divmod(index, 8)
        block = images[:, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
        torch.testing.assert_close(patches[:, index], block.permute(0, 2, 3, 1).reshape(2, -1))


def test_loss_ignores_visible_patches():
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randn(2, 64, 12, generator=generator, requires_grad=True)
    targets = torch.randn(2, 64, 12, generator=generator)
    masked = torch.zeros(2, 64)
    masked[:, ::3] = 1.0
    loss = masked_patch_loss(predictions, targets, masked)
    expected = ((predictions - targets) ** 2).mean(-1)[masked.bool()].mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(predictions.grad[~masked.bool()] == 0)
    assert torch.any(predictions.grad[masked.bool()] != 0)
    changed = predictions.detach().clone()
    changed[~masked.bool()] += 100.0
    torch.testing.assert_close(masked_patch_loss(changed, targets, masked), loss.detach())


def test_norm_pix_targets_are_standardized_per_patch():
    mae = tiny_mae()
    targets = mae.pixel_targets(torch.rand(2, 3, 16, 16))
    torch.testing.assert_close(targets.mean(-1), torch.zeros(2, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(-1), torch.ones(2, 64), atol=1e-3, rtol=0)
    raw = tiny_mae(norm_pix_loss=False)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(raw.pixel_targets(images), patchify(images, 2))


def test_trains_through_the_shared_loop_deterministically():
    images = torch.randn(32, 3, 16, 16)
    config = TrainingConfig(
        device="cpu", epochs=2, batch_size=16, warmup_epochs=1, betas=(0.9, 0.95)
    )
    runs = []
    for _ in range(2):
        mae = tiny_mae()
        history = train(mae, images, config, seed=0, description="mae")
        runs.append((history, mae.evaluation_encoder().state_dict()))
    assert len(runs[0][0]) == 4 and np.isfinite(runs[0][0]["loss"]).all()
    np.testing.assert_array_equal(runs[0][0]["loss"], runs[1][0]["loss"])
    for name, tensor in runs[0][1].items():
        torch.testing.assert_close(tensor, runs[1][1][name], rtol=0, atol=0)
    assert runs[0][1]["blocks.0.attn.qkv.weight"].shape == (96, 32)


def test_training_loss_is_the_mean_over_patches_the_encoder_did_not_see():
    """The loss the loop optimizes, rebuilt from its parts: per-patch squared error of
    the decoder's output against normalized pixels, averaged over the masked patches
    only (the paper), with the encoder fed exactly the kept ones."""
    mae = tiny_mae()
    images = torch.randn(4, 3, 16, 16)
    draws = SampleDraws.first_batch(4, seed=3)
    kept, restore = random_masking(64, mae.config.mask_ratio, draws.per_sample("masks"))
    seen = []
    handle = mae.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        loss = mae.loss_on(images, draws)
        predictions = mae.reconstruct(images, kept, restore)
    handle.remove()
    assert seen[0] == (4, 16, 32)  # 25 % of 64 patches, encoder width 32
    per_patch = ((predictions - mae.pixel_targets(images)) ** 2).mean(-1)
    hidden = torch.ones(4, 64, dtype=torch.bool)
    for row in range(4):
        hidden[row, kept[row]] = False
    assert int(hidden.sum()) == 4 * 48
    torch.testing.assert_close(loss, per_patch[hidden].mean())
    # Averaging over every patch instead gives another number on this draw.
    assert not torch.isclose(loss, per_patch.mean())
