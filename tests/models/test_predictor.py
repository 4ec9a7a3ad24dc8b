"""The narrow I-JEPA predictor."""

from __future__ import annotations

import pytest
import torch

from selfsup.models import Predictor

GRID, ENCODER_DIM = 4, 32


def make_predictor(depth: int = 2, seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    return Predictor(GRID, ENCODER_DIM, embed_dim=16, depth=depth, num_heads=2).eval()


def padded_inputs(rows: list[list[int]], pad_index: int = 0, seed: int = 0):
    """Context tokens for index lists of different lengths, padded with random tokens."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(len(r) for r in rows)
    tokens = torch.randn(len(rows), longest, ENCODER_DIM, generator=generator)
    indices = torch.full((len(rows), longest), pad_index, dtype=torch.long)
    valid = torch.zeros(len(rows), longest, dtype=torch.bool)
    for b, row in enumerate(rows):
        indices[b, : len(row)] = torch.tensor(row)
        valid[b, : len(row)] = True
    return tokens, indices, valid


TARGETS = torch.tensor(
    [
        [[10, 11, 14, 15], [0, 1, 4, 5], [2, 3, 6, 7]],
        [[8, 9, 12, 13], [5, 6, 9, 10], [0, 1, 4, 5]],
    ]
)


def test_output_shape():
    predictor = make_predictor()
    tokens, indices, valid = padded_inputs([[0, 2, 3, 9], [1, 7]])
    out = predictor(tokens, indices, valid, TARGETS)
    assert out.shape == (2, 3, 4, ENCODER_DIM)


@pytest.mark.parametrize("pad_index", [0, 13])
def test_padded_context_gives_the_unpadded_predictions(pad_index):
    predictor = make_predictor()
    rows = [[0, 2, 3, 7, 12], [1, 3]]
    tokens, indices, valid = padded_inputs(rows, pad_index)
    with torch.no_grad():
        padded = predictor(tokens, indices, valid, TARGETS)
        for b, row in enumerate(rows):
            n = len(row)
            alone = predictor(
                tokens[b : b + 1, :n],
                indices[b : b + 1, :n],
                torch.ones(1, n, dtype=torch.bool),
                TARGETS[b : b + 1],
            )
            torch.testing.assert_close(padded[b], alone[0], atol=1e-5, rtol=0)


def test_target_blocks_are_predicted_independently():
    """Each block is predicted from the context alone, never from the other blocks."""
    predictor = make_predictor()
    tokens, indices, valid = padded_inputs([[0, 2, 3, 9], [1, 7]])
    with torch.no_grad():
        together = predictor(tokens, indices, valid, TARGETS)
        for m in range(TARGETS.shape[1]):
            alone = predictor(tokens, indices, valid, TARGETS[:, m : m + 1])
            torch.testing.assert_close(together[:, m : m + 1], alone, atol=1e-5, rtol=0)


def test_predictions_depend_on_context_and_target_positions():
    predictor = make_predictor()
    tokens, indices, valid = padded_inputs([[0, 2, 3, 9], [1, 7]])
    with torch.no_grad():
        base = predictor(tokens, indices, valid, TARGETS)
        other_tokens = predictor(tokens + 1.0, indices, valid, TARGETS)
        flipped = predictor(tokens, indices, valid, TARGETS.flip(-1))
    assert not torch.allclose(base, other_tokens)
    # Reversing the target order reverses the outputs: queries carry their positions.
    torch.testing.assert_close(flipped, base.flip(2), atol=1e-5, rtol=0)


def test_positions_are_a_fixed_buffer_and_everything_else_trains():
    predictor = make_predictor()
    assert "pos_embed" not in dict(predictor.named_parameters())
    assert predictor.pos_embed.shape == (GRID * GRID, 16)
    predictor.train()
    tokens, indices, valid = padded_inputs([[0, 2, 3, 9], [1, 7]])
    predictor(tokens, indices, valid, TARGETS).square().mean().backward()
    for name, param in predictor.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert predictor.mask_token.grad.abs().sum() > 0
