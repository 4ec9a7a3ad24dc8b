"""I-JEPA: targets, predictions, loss, gradients and the EMA target encoder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.masks import MaskBatch, sample_masks
from selfsup.methods import METHODS, build_method
from selfsup.methods.ijepa import IJEPA, ema_update, prediction_loss
from selfsup.randomness import SampleDraws
from selfsup.training import train
from tests.helpers import (
    TINY_ENCODER,
    TINY_MASKING,
    TINY_PREDICTOR,
    draws_for,
    make_ijepa,
    tiny_training,
)


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def hand_made_masks() -> MaskBatch:
    """Two images on the 8x8 grid: row 1's context is shorter and padded."""
    context_indices = np.zeros((2, 6), dtype=np.int64)
    context_valid = np.zeros((2, 6), dtype=bool)
    context_indices[0] = [0, 1, 2, 8, 9, 10]
    context_valid[0] = True
    context_indices[1, :3] = [40, 41, 63]
    context_valid[1, :3] = True
    target_indices = np.array(
        [
            [[18, 19, 26, 27], [36, 37, 44, 45]],
            [[0, 1, 8, 9], [54, 55, 62, 63]],
        ],
        dtype=np.int64,
    )
    return MaskBatch(context_indices, context_valid, target_indices)


def independent_targets(method: IJEPA, images: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
    """Target-encoder outputs on full images, LayerNorm without affine, gathered by loop."""
    with torch.no_grad():
        full = method.target_encoder(images)
        full = F.layer_norm(full, (full.shape[-1],))
    batch, blocks, length = masks.target_indices.shape
    out = torch.empty(batch, blocks, length, full.shape[-1])
    for b in range(batch):
        for m in range(blocks):
            for t in range(length):
                out[b, m, t] = full[b, int(masks.target_indices[b, m, t])]
    return out


@pytest.fixture
def method() -> IJEPA:
    """Tiny I-JEPA whose target encoder differs from its context encoder."""
    method = make_ijepa()
    perturb(method.target_encoder)
    return method.eval()


def test_registered_by_name():
    assert METHODS["ijepa"] is IJEPA
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_method("nope", {}, TINY_ENCODER, TINY_MASKING, in_chans=1)


def test_target_encoder_starts_as_a_frozen_independent_copy():
    method = make_ijepa()
    context = dict(method.context_encoder.named_parameters())
    for name, param in method.target_encoder.named_parameters():
        assert not param.requires_grad
        assert torch.equal(param, context[name])
        assert param.data_ptr() != context[name].data_ptr()
    assert method.evaluation_encoder() is method.target_encoder


@pytest.mark.parametrize("mask_kind", ["hand_made", "sampled"])
def test_predictions_and_targets(method, images, mask_kind):
    images = images[:2]
    if mask_kind == "hand_made":
        masks = hand_made_masks()
    else:
        masks = method.sampler.sample(2, np.random.default_rng(0))
    predictions, targets = method.forward_with_masks(images, masks)
    expected_shape = (*masks.target_indices.shape, TINY_ENCODER.embed_dim)
    assert predictions.shape == expected_shape
    assert targets.shape == expected_shape
    torch.testing.assert_close(
        targets, independent_targets(method, images, masks), atol=1e-6, rtol=0
    )
    # LayerNorm without affine: every target token has zero mean, unit variance.
    torch.testing.assert_close(targets.mean(-1), torch.zeros(targets.shape[:-1]), atol=1e-5, rtol=0)
    assert not targets.requires_grad
    assert targets.grad_fn is None
    assert predictions.requires_grad


def test_targets_come_from_the_target_encoder_not_the_context_encoder(method, images):
    masks = hand_made_masks()
    _, targets = method.forward_with_masks(images[:2], masks)
    swapped = copy.deepcopy(method)
    swapped.target_encoder = swapped.context_encoder
    assert not torch.allclose(targets, independent_targets(swapped, images[:2], masks))


def test_prediction_loss_l2_and_smooth_l1_match_formulas():
    generator = torch.Generator().manual_seed(0)
    predictions = 2.0 * torch.randn(2, 3, 4, 8, generator=generator)
    targets = torch.randn(2, 3, 4, 8, generator=generator)
    diff = predictions - targets
    assert (diff.abs() < 1).any() and (diff.abs() > 1).any()
    l2 = ((predictions - targets) ** 2).mean()
    torch.testing.assert_close(prediction_loss(predictions, targets, "l2"), l2)
    smooth = torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5).mean()
    torch.testing.assert_close(prediction_loss(predictions, targets, "smooth_l1"), smooth)
    with pytest.raises(ValueError, match="cosine"):
        prediction_loss(predictions, targets, "cosine")


@pytest.mark.parametrize("loss", ["l2", "smooth_l1"])
def test_training_loss_is_the_configured_loss_of_sampled_masks(images, loss):
    method = make_ijepa(loss=loss)
    perturb(method.target_encoder)
    method.eval()
    got = method.loss_on(images[:4], draws_for(images[:4], 11))
    masks = sample_masks(method.sampler, draws_for(images[:4], 11))
    predictions, targets = method.forward_with_masks(images[:4], masks)
    diff = (predictions - targets).detach()
    if loss == "l2":
        expected = (diff**2).mean()
    else:
        expected = torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5).mean()
    assert got.ndim == 0
    torch.testing.assert_close(got.detach(), expected, atol=1e-6, rtol=1e-6)


def test_gradients_reach_context_encoder_and_predictor_only(method, images):
    method.train()
    loss = method.loss_on(images[:4], draws_for(images[:4], 0))
    loss.backward()
    for name, param in method.context_encoder.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    for name, param in method.predictor.named_parameters():
        assert param.grad is not None, name
    assert sum(p.grad.abs().sum() for p in method.context_encoder.parameters()) > 0
    for param in method.target_encoder.parameters():
        assert param.grad is None
        assert not param.requires_grad


def test_ema_update_formula():
    target = torch.nn.Linear(3, 2)
    online = torch.nn.Linear(3, 2)
    old = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for before, now, new in zip(old, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(now, 0.9 * before + 0.1 * new.detach())


def test_one_training_step_updates_target_by_ema_of_new_context(images):
    """After one AdamW step, target = m * old_target + (1 - m) * new_context."""
    momentum = 0.5
    method = make_ijepa(ema_momentum=(momentum, momentum))
    old_target = {n: p.detach().clone() for n, p in method.target_encoder.named_parameters()}
    old_context = {n: p.detach().clone() for n, p in method.context_encoder.named_parameters()}
    old_predictor = [p.detach().clone() for p in method.predictor.parameters()]
    config = tiny_training(epochs=1, warmup_epochs=0, batch_size=16)
    history = train(method, images[:16], config, seed=0)
    assert len(history) == 1
    assert history["momentum"].iloc[0] == momentum

    new_context = dict(method.context_encoder.named_parameters())
    moved = 0
    for name, param in method.target_encoder.named_parameters():
        expected = momentum * old_target[name] + (1 - momentum) * new_context[name].detach()
        torch.testing.assert_close(param.detach(), expected, atol=1e-7, rtol=1e-6)
        moved += int(not torch.equal(new_context[name], old_context[name]))
    assert moved > 0, "the optimizer step did not change the context encoder"
    assert any(
        not torch.equal(a, b)
        for a, b in zip(old_predictor, method.predictor.parameters(), strict=True)
    )


def test_every_step_applies_ema_with_the_scheduled_momentum(images):
    """Default schedule 0.996 -> 1.0: checked at each of 6 steps against the context
    encoder as the optimizer left it."""
    method = make_ijepa()
    original = method.after_optimizer_step
    checks = []

    def checked(step, total_steps):
        old_target = [p.detach().clone() for p in method.target_encoder.parameters()]
        context = [p.detach().clone() for p in method.context_encoder.parameters()]
        logged = original(step, total_steps)
        m = 0.996 + (1.0 - 0.996) * step / (total_steps - 1)
        assert logged["momentum"] == pytest.approx(m)
        for old, new, ctx in zip(
            old_target, method.target_encoder.parameters(), context, strict=True
        ):
            torch.testing.assert_close(new.detach(), m * old + (1 - m) * ctx)
        checks.append(step)
        return logged

    method.after_optimizer_step = checked
    history = train(method, images, tiny_training(), seed=0)
    assert checks == list(range(6))
    assert history["momentum"].iloc[-1] == 1.0


def test_targets_stay_deterministic_while_stochastic_depth_randomizes_the_context(images):
    """In training mode the context encoder drops residual branches at random; the EMA
    target encoder stays in eval mode, so the same image always gets the same targets."""
    torch.manual_seed(0)
    encoder = TINY_ENCODER.model_copy(update={"depth": 2, "drop_path_rate": 0.5})
    method = build_method("ijepa", {"predictor": TINY_PREDICTOR}, encoder, TINY_MASKING, 1)
    method.train()
    assert method.context_encoder.training and method.predictor.training
    assert not method.target_encoder.training
    first, second = method.target_features(images), method.target_features(images)
    assert torch.equal(first, second)
    assert not torch.equal(method.context_encoder(images), method.context_encoder(images))


def test_prediction_cosine_monitor_is_the_mean_cosine_of_each_predicted_patch(method, images):
    """With the masks of the held-out batch's fixed draws, written out: dot product
    over the product of norms, averaged over images, targets and patches."""
    batch = images[:6]
    with torch.no_grad():
        reported = method.monitor_metrics(batch)["prediction_cosine"]
        masks = sample_masks(method.sampler, SampleDraws.first_batch(6))
        predictions, targets = method.forward_with_masks(batch, masks)
    cosine = (predictions * targets).sum(-1) / (predictions.norm(dim=-1) * targets.norm(dim=-1))
    assert reported == pytest.approx(float(cosine.mean()), abs=1e-6)
    assert abs(reported) < 0.9  # untrained: far from a predictor that matches its targets
