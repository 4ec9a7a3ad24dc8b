"""ViT encoder over a subset of patches."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block

from selfsup.config import EncoderConfig
from selfsup.models import VisionTransformerEncoder, build_encoder
from selfsup.models.tokens import TokenLayout
from selfsup.models.vit import (
    encoder_checkpoint,
    encoder_from_checkpoint,
    gather_tokens,
    sincos_positions,
)

IMAGE, PATCH, CHANS, DIM = 16, 4, 1, 32  # 4x4 grid, 16 patches


def make_encoder(depth: int = 2, seed: int = 0, **kwargs) -> VisionTransformerEncoder:
    torch.manual_seed(seed)
    encoder = VisionTransformerEncoder(
        IMAGE, PATCH, CHANS, embed_dim=DIM, depth=depth, num_heads=2, **kwargs
    )
    return encoder.eval()


def batch(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, CHANS, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def test_output_shapes_full_and_subset():
    encoder = make_encoder()
    images = batch(3)
    assert encoder.num_patches == 16
    assert encoder(images).shape == (3, 16, DIM)
    indices = torch.tensor([[0, 5, 7, 15, 2], [1, 2, 3, 4, 5], [15, 14, 13, 12, 11]])
    assert encoder(images, indices).shape == (3, 5, DIM)


def test_embed_gathers_positioned_patch_tokens():
    encoder = make_encoder()
    images = batch(2)
    full = encoder.embed(images)
    indices = torch.tensor([[3, 0, 9], [15, 15, 1]])
    picked = encoder.embed(images, indices)
    for b in range(2):
        for i in range(3):
            assert torch.equal(picked[b, i], full[b, indices[b, i]])


def test_patch_tokens_are_contiguous_and_keep_the_stream_contiguous():
    """The convolution's flattened output is transposed in memory, and sums keep their
    first operand's strides: without the copy each LayerNorm of every block would copy
    its input first."""
    encoder = make_encoder()
    images = batch(2)
    transposed = encoder.patch_embed(images) + encoder.pos_embed
    assert not transposed.is_contiguous()
    tokens = encoder.patch_tokens(images)
    assert tokens.is_contiguous() and torch.equal(tokens, transposed)
    layout = TokenLayout.dense(2, encoder.num_patches)
    for block in encoder.blocks:
        tokens = block(tokens, layout)
        assert tokens.is_contiguous()


def test_outputs_follow_patch_positions_not_sequence_order():
    """Positions are added before patches are selected, so permuting the selected
    indices permutes the outputs and changes nothing else."""
    encoder = make_encoder()
    images = batch(2)
    indices = torch.tensor([[0, 3, 6, 9, 12, 15], [1, 2, 4, 8, 10, 11]])
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    out = encoder(images, indices)
    out_permuted = encoder(images, indices[:, perm])
    torch.testing.assert_close(out_permuted, out[:, perm], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad_index", [0, 7])
def test_padding_is_ignored(pad_index):
    """Valid tokens of a padded batch equal each row encoded alone, unpadded; padded
    entries of the output are zeros."""
    encoder = make_encoder(depth=3)
    images = batch(3)
    rows = [[0, 1, 2, 5, 6, 9, 10, 14], [3, 7, 11], [4, 8, 12, 13, 15]]
    longest = max(len(r) for r in rows)
    indices = torch.full((3, longest), pad_index, dtype=torch.long)
    valid = torch.zeros(3, longest, dtype=torch.bool)
    for b, row in enumerate(rows):
        indices[b, : len(row)] = torch.tensor(row)
        valid[b, : len(row)] = True
    with torch.no_grad():
        padded = encoder(images, indices, valid)
        for b, row in enumerate(rows):
            alone = encoder(images[b : b + 1], torch.tensor([row]))
            torch.testing.assert_close(padded[b, : len(row)], alone[0], atol=1e-5, rtol=0)
        assert torch.count_nonzero(padded[~valid]) == 0
        # Without the mask the padding would leak into the valid tokens.
        unmasked = encoder(images, indices)
    assert not torch.allclose(unmasked[1, :3], padded[1, :3], atol=1e-5)


def test_positional_embedding_is_a_fixed_buffer():
    encoder = make_encoder()
    names = {name for name, _ in encoder.named_parameters()}
    assert "pos_embed" not in names
    buffers = dict(encoder.named_buffers())
    assert "pos_embed" in buffers
    pos = buffers["pos_embed"]
    assert not pos.requires_grad
    assert pos.shape == (1, 16, DIM)
    torch.testing.assert_close(pos[0], sincos_positions(4, DIM))
    # Every patch position gets a different embedding, bounded like sin/cos.
    assert torch.unique(pos[0], dim=0).shape[0] == 16
    assert pos.abs().max() <= 1.0
    # Rebuilt from the grid, so not part of the saved weights.
    assert "pos_embed" not in encoder.state_dict()


def test_smaller_images_get_positions_spanning_the_whole_grid():
    """16 px images on a 32 px encoder (a 4x4 grid of an 8x8 one): each position is
    resampled from the full grid's, nearest to the full positions its patch covers, so a
    low-resolution view spans the image instead of its top-left corner."""
    torch.manual_seed(0)
    encoder = VisionTransformerEncoder(32, PATCH, CHANS, embed_dim=64, depth=1, num_heads=2)
    small = torch.randn(2, CHANS, 16, 16)
    assert encoder(small).shape == (2, 16, 64)
    resampled = encoder.positions(small)[0]
    full = encoder.pos_embed[0]
    nearest = torch.cdist(resampled, full).argmin(dim=1)
    for index, full_index in enumerate(nearest.tolist()):
        row, column = divmod(index, 4)
        assert divmod(full_index, 8)[0] in (2 * row, 2 * row + 1), index
        assert divmod(full_index, 8)[1] in (2 * column, 2 * column + 1), index
    assert encoder.positions(torch.randn(1, CHANS, 32, 32)) is encoder.pos_embed
    with pytest.raises(AssertionError, match="divisible by patch size"):
        encoder(torch.randn(1, CHANS, 18, 18))


def test_pos_embed_not_changed_by_an_optimizer_step():
    encoder = make_encoder()
    encoder.train()
    before = encoder.pos_embed.clone()
    optimizer = torch.optim.SGD(encoder.parameters(), lr=1.0)
    encoder(batch(2)).square().mean().backward()
    optimizer.step()
    assert torch.equal(before, encoder.pos_embed)


def test_forward_layers_returns_the_last_blocks_normed():
    encoder = make_encoder(depth=6)
    images = batch(2)
    with torch.no_grad():
        layers = encoder.forward_layers(images, last=4)
        assert len(layers) == 4
        assert all(out.shape == (2, 16, DIM) for out in layers)
        # Recomputed block by block with timm's own block forward.
        x = encoder.patch_embed(images) + encoder.pos_embed
        expected = []
        for block in encoder.blocks:
            x = Block.forward(block, x)
            expected.append(encoder.norm(x))
        for got, want in zip(layers, expected[-4:], strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(layers[-1], encoder(images), atol=0, rtol=0)
        assert len(encoder.forward_layers(images, last=1)) == 1


def test_gather_tokens_matches_a_loop():
    tokens = torch.randn(2, 10, 3)
    indices = torch.tensor([[[0, 9], [4, 4]], [[1, 2], [3, 8]]])
    picked = gather_tokens(tokens, indices)
    assert picked.shape == (2, 2, 2, 3)
    for b in range(2):
        for m in range(2):
            for t in range(2):
                assert torch.equal(picked[b, m, t], tokens[b, indices[b, m, t]])


def test_build_encoder_uses_the_config():
    config = EncoderConfig(embed_dim=24, depth=3, num_heads=3, mlp_ratio=2.0)
    encoder = build_encoder(config, image_size=12, patch_size=3, in_chans=2)
    assert encoder.embed_dim == 24
    assert len(encoder.blocks) == 3
    assert encoder.grid == 4
    assert encoder.patch_embed.proj.in_channels == 2
    assert encoder(torch.zeros(1, 2, 12, 12)).shape == (1, 16, 24)


def test_checkpoint_round_trip_reproduces_outputs_exactly():
    config = EncoderConfig(embed_dim=DIM, depth=2, num_heads=2)
    torch.manual_seed(3)
    encoder = build_encoder(config, IMAGE, PATCH, CHANS).eval()
    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(0.01 * torch.randn_like(param))
    checkpoint = encoder_checkpoint(encoder, config, IMAGE, PATCH, {"mean": [0.4], "std": [0.3]})
    assert checkpoint["config"]["normalization"] == {"mean": [0.4], "std": [0.3]}
    assert checkpoint["config"]["in_chans"] == CHANS
    torch.manual_seed(99)  # a different init must be fully overwritten
    rebuilt = encoder_from_checkpoint(checkpoint)
    assert not rebuilt.training
    images = batch(2)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), encoder(images))


def test_the_key_bias_gets_no_gradient_and_the_query_and_value_biases_do():
    """Softmax ignores a shift shared by every key, so the key third of qkv.bias has a
    zero gradient in exact arithmetic (why tests.helpers.assert_same_weights skips it)."""
    encoder = make_encoder(depth=1).double()
    encoder(batch().double()).pow(2).sum().backward()
    grad = encoder.blocks[0].attn.qkv.bias.grad
    query, key, value = grad.chunk(3)
    assert key.abs().max() < 1e-12 * grad.abs().max()
    assert query.abs().max() > 1e-3 * grad.abs().max()
    assert value.abs().max() > 1e-3 * grad.abs().max()
