"""I-JEPA on packed tokens: the loss and gradients of the padded computation, and the
shared-context predictor's attention structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from selfsup.config import EncoderConfig, MaskingConfig
from selfsup.masks import MaskBatch, sample_masks
from selfsup.methods import build_method
from selfsup.methods.ijepa import IJEPA, masks_as_tensors
from selfsup.models.vit import gather_tokens
from selfsup.randomness import SampleDraws

MASKING = MaskingConfig(image_size=16, patch_size=2, multiblock={"num_targets": 3})
ENCODER = EncoderConfig(embed_dim=32, depth=2, num_heads=2)


def make_method(seed: int = 0, context: str = "per_block") -> IJEPA:
    torch.manual_seed(seed)
    predictor = {"embed_dim": 16, "depth": 2, "num_heads": 2, "context": context}
    method = build_method("ijepa", {"predictor": predictor}, ENCODER, MASKING, in_chans=1)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # targets from weights other than the context encoder's
        for param in method.target_encoder.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return method.double().train()


def sampled_inputs(method: IJEPA, batch: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    images = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    masks = sample_masks(method.sampler, SampleDraws(seed, 0, 3, np.arange(batch)))
    return {"images": images.double(), **masks_as_tensors(masks)}


def padded_loss(method: IJEPA, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """As the method computes its loss: in float32 whatever the weights' precision."""
    predictions, targets = padded_forward(method, inputs)
    return F.mse_loss(predictions.float(), targets.float())


def padded_forward(
    method: IJEPA, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """I-JEPA's predictions and targets computed the padded way, written out with timm's own block
    forward: contexts padded to the longest with padded keys hidden, the context
    repeated per target block in the predictor, every block output computed."""
    images, context_idx = inputs["images"], inputs["context_indices"]
    valid, target_idx = inputs["context_valid"], inputs["target_indices"]
    batch, blocks, block_len = target_idx.shape
    with torch.no_grad():
        encoder = method.target_encoder
        x = encoder.patch_embed(images) + encoder.pos_embed
        for block in encoder.blocks:
            x = Block.forward(block, x)
        full = F.layer_norm(encoder.norm(x), (x.shape[-1],))
        targets = gather_tokens(full, target_idx)
    encoder = method.context_encoder
    x = gather_tokens(encoder.patch_embed(images) + encoder.pos_embed, context_idx)
    for block in encoder.blocks:
        x = Block.forward(block, x, attn_mask=valid[:, None, None, :])
    context = encoder.norm(x)
    predictor = method.predictor
    context = predictor.embed(context) + predictor.pos_embed[context_idx]
    context = context.repeat_interleave(blocks, dim=0)
    queries = predictor.mask_token + predictor.pos_embed[target_idx.flatten(0, 1)]
    x = torch.cat([context, queries], dim=1)
    keys = torch.cat(
        [valid.repeat_interleave(blocks, dim=0), valid.new_ones(batch * blocks, block_len)], dim=1
    )
    for block in predictor.blocks:
        x = Block.forward(block, x, attn_mask=keys[:, None, None, :])
    predictions = predictor.project(predictor.norm(x[:, -block_len:]))
    return predictions.reshape(batch, blocks, block_len, -1), targets


def test_the_sampled_contexts_differ_in_length():
    inputs = sampled_inputs(make_method())
    lengths = inputs["context_valid"].sum(dim=1)
    assert lengths.min() < lengths.max()
    assert len(inputs["context_slots"]) == int(lengths.sum())


def test_packed_predictions_and_targets_equal_the_padded_ones():
    method = make_method().eval()
    inputs = sampled_inputs(method)
    with torch.no_grad():
        predictions, targets = method.predict(inputs)
        expected_predictions, expected_targets = padded_forward(method, inputs)
    torch.testing.assert_close(predictions, expected_predictions, atol=1e-12, rtol=0)
    torch.testing.assert_close(targets, expected_targets, atol=1e-12, rtol=0)


def test_packed_loss_and_gradients_equal_the_padded_ones():
    """To float32 tolerance: the loss is computed in float32, as in training."""
    method = make_method()
    inputs = sampled_inputs(method)
    reference = padded_loss(method, inputs)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
    method.zero_grad()
    loss = method(inputs)
    loss.backward()
    torch.testing.assert_close(loss, reference, atol=0, rtol=1e-6)
    got = {name: p.grad for name, p in method.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    assert any(name.startswith("predictor.") for name in got)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-9, rtol=1e-5, msg=name)


def test_full_contexts_run_dense_and_give_the_padded_loss():
    """Equal-length contexts (e.g. batch_min) skip packing altogether."""
    method = make_method()
    inputs = sampled_inputs(method)
    length = int(inputs["context_valid"].sum(dim=1).min())
    rows = [
        idx[valid][:length]
        for idx, valid in zip(inputs["context_indices"], inputs["context_valid"], strict=True)
    ]
    masks = MaskBatch(
        torch.stack(rows).numpy(),
        np.ones((len(rows), length), dtype=bool),
        inputs["target_indices"].numpy(),
    )
    dense = {"images": inputs["images"], **masks_as_tensors(masks)}
    assert len(dense["context_slots"]) == dense["context_indices"].numel()
    torch.testing.assert_close(method(dense), padded_loss(method, dense), atol=0, rtol=1e-6)


def shared_predictions(method: IJEPA, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return method.predict(inputs)[0]


def test_shared_context_blocks_never_see_each_other():
    """In the shared sequence, a block's predictions depend on the context and its own
    queries only: moving another block leaves them unchanged."""
    method = make_method(context="shared").eval()
    inputs = sampled_inputs(method)
    before = shared_predictions(method, inputs)
    moved = dict(inputs)
    targets = inputs["target_indices"].clone()
    targets[:, 2] = (targets[:, 2] + 1) % 64
    moved["target_indices"] = targets
    after = shared_predictions(method, moved)
    torch.testing.assert_close(after[:, :2], before[:, :2], atol=1e-12, rtol=0)
    assert not torch.allclose(after[:, 2], before[:, 2])


def test_shared_context_predicts_each_block_as_if_alone():
    """A block predicted among others equals that block predicted with no others."""
    method = make_method(context="shared").eval()
    inputs = sampled_inputs(method)
    together = shared_predictions(method, inputs)
    for m in range(3):
        alone = dict(inputs)
        alone["target_indices"] = inputs["target_indices"][:, m : m + 1]
        torch.testing.assert_close(
            shared_predictions(method, alone)[:, 0], together[:, m], atol=1e-12, rtol=0
        )


def test_shared_context_equals_a_padded_reference():
    """Each block's shared-mode predictions equal timm's padded blocks run on the
    context and that block's queries, the context's rows barred from the queries."""
    method = make_method(context="shared").eval()
    inputs = sampled_inputs(method)
    together = shared_predictions(method, inputs)
    context_idx, valid = inputs["context_indices"], inputs["context_valid"]
    batch, context_len = context_idx.shape
    predictor = method.predictor
    with torch.no_grad():
        context = method.context_encoder(inputs["images"], context_idx, valid)
        context = predictor.embed(context) + predictor.pos_embed[context_idx]
        for m in range(3):
            target_idx = inputs["target_indices"][:, m]
            block_len = target_idx.shape[1]
            queries = predictor.mask_token + predictor.pos_embed[target_idx]
            x = torch.cat([context, queries], dim=1)
            keys = torch.cat([valid, valid.new_ones(batch, block_len)], dim=1)
            mask = keys[:, None, None, :].repeat(1, 1, context_len + block_len, 1)
            mask[:, :, :context_len, context_len:] = False
            for block in predictor.blocks:
                x = Block.forward(block, x, attn_mask=mask)
            expected = predictor.project(predictor.norm(x[:, context_len:]))
            torch.testing.assert_close(together[:, m], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("context", ["per_block", "shared"])
def test_predictor_gradients_reach_every_trainable_parameter(context):
    method = make_method(context=context)
    method(sampled_inputs(method)).backward()
    for name, param in method.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
