"""Packed token layouts and the block that runs on them, against timm's padded block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from selfsup.models.tokens import (
    GatheredQueries,
    TailQueries,
    TokenBlock,
    TokenLayout,
    attention,
    packed_rows,
)
from selfsup.models.vit import LayerNorm

DIM, HEADS = 16, 2
LENGTHS = [5, 2, 4]  # three sequences of different lengths, padded to 5


def valid_mask(lengths: list[int], length: int | None = None) -> torch.Tensor:
    length = length or max(lengths)
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def make_block(seed: int = 0, drop_path: float = 0.0) -> TokenBlock:
    torch.manual_seed(seed)
    block = TokenBlock(DIM, HEADS, 2.0, qkv_bias=True, norm_layer=LayerNorm, drop_path=drop_path)
    with torch.no_grad():
        for param in block.parameters():  # away from the init's zero biases and unit norms
            param.add_(0.1 * torch.randn_like(param))
    return block.double().eval()


def padded_reference(block: TokenBlock, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """timm's own forward on padded tokens, padded keys hidden."""
    return Block.forward(block, x, attn_mask=valid[:, None, None, :])


def test_layout_from_valid_packs_and_unpacks():
    valid = valid_mask(LENGTHS)
    layout = TokenLayout.from_valid(valid)
    assert layout.packed and (layout.num_sequences, layout.length) == (3, 5)
    padded = torch.randn(3, 5, 4)
    packed = layout.to_packed(padded)
    assert packed.shape == (packed_rows(sum(LENGTHS)), 4)
    assert layout.spare == packed.shape[0] - sum(LENGTHS) > 0
    assert torch.count_nonzero(packed[: layout.spare]) == 0
    torch.testing.assert_close(layout.real_tokens(packed), padded[valid])
    back = layout.to_padded(packed)
    torch.testing.assert_close(back[valid], padded[valid])
    assert torch.count_nonzero(back[~valid]) == 0
    sequences = layout.sequence_of_tokens()
    assert sequences[layout.spare :].tolist() == [0] * 5 + [1] * 2 + [2] * 4
    assert len(sequences) == packed.shape[0]
    mask = layout.attention_mask
    assert mask.shape == (3, 1, 1, 5)
    assert torch.equal(mask[:, 0, 0], valid)


@pytest.mark.parametrize("count", [1, 7, 8, 11, 100, 2670, 6801, 10000])
def test_packed_rows_round_up_a_little_to_few_sizes(count):
    rows = packed_rows(count)
    assert rows >= count and rows % 8 == 0
    assert rows - count < max(8, count / 16)


def test_packed_rows_give_few_shapes_for_nearby_counts():
    """Token counts of one configuration spread over a few hundred: a handful of shapes."""
    assert len({packed_rows(count) for count in range(2400, 2900)}) <= 5


def test_full_rows_give_a_dense_layout():
    layout = TokenLayout.from_valid(torch.ones(2, 3, dtype=torch.bool))
    assert not layout.packed
    x = torch.randn(2, 3, 4)
    assert layout.to_packed(x) is x and layout.to_padded(x) is x
    assert layout.attention_mask is None
    with pytest.raises(ValueError, match="dense layout"):
        layout.sequence_of_tokens()


def test_dense_block_is_timms_block():
    block = make_block()
    x = torch.randn(3, 5, DIM, dtype=torch.float64)
    out = block(x, TokenLayout.dense(3, 5))
    torch.testing.assert_close(out, Block.forward(block, x), atol=1e-12, rtol=0)


def test_packed_block_gives_the_padded_outputs_and_gradients():
    """Only attention sees padding: every real token's output, and every gradient,
    equals timm's padded block with the padded keys hidden."""
    block = make_block()
    valid = valid_mask(LENGTHS)
    layout = TokenLayout.from_valid(valid)
    x = torch.randn(3, 5, DIM, dtype=torch.float64)
    weights = torch.randn(3, 5, DIM, dtype=torch.float64)

    x_ref = x.clone().requires_grad_(True)
    reference = padded_reference(block, x_ref, valid)
    (reference * weights)[valid].sum().backward()
    grads_ref = {name: p.grad.clone() for name, p in block.named_parameters()}
    block.zero_grad()

    x_packed = layout.to_packed(x)
    x_packed[: layout.spare] = 1e3  # spare rows: whatever they hold, nothing reads it
    x_packed.requires_grad_(True)
    packed = block(x_packed, layout)
    (packed * layout.to_packed(weights)).sum().backward()

    assert layout.spare > 0
    torch.testing.assert_close(layout.real_tokens(packed), reference[valid], atol=1e-12, rtol=0)
    real_grad = layout.real_tokens(x_packed.grad)
    torch.testing.assert_close(real_grad, x_ref.grad[valid], atol=1e-12, rtol=0)
    for name, param in block.named_parameters():
        torch.testing.assert_close(param.grad, grads_ref[name], atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize("packed", [True, False])
def test_tail_queries_are_the_tail_of_the_full_output(packed):
    block = make_block()
    lengths = [5, 3, 4] if packed else [5, 5, 5]
    count = 2
    # Queries are the last `count` slots of each sequence: build padded sequences whose
    # real tokens are the leading (length - count) slots, then the queries.
    slots = torch.cat(
        [
            torch.cat([torch.arange(n - count), torch.arange(5 - count, 5)]) + s * 5
            for s, n in enumerate(lengths)
        ]
    )
    grid_valid = torch.zeros(15, dtype=torch.bool).index_fill(0, slots, True).view(3, 5)
    context_slots = torch.cat([s * 5 + torch.arange(n - count) for s, n in enumerate(lengths)])
    query_slots = torch.cat([s * 5 + torch.arange(5 - count, 5) for s in range(3)])
    layout = TokenLayout(3, 5, torch.cat([context_slots, query_slots])) if packed else None
    x = torch.randn(3, 5, DIM, dtype=torch.float64)
    full = padded_reference(block, x, grid_valid)
    if packed:
        tokens = x.reshape(15, DIM)[layout.slots]
        out = block(tokens, layout, TailQueries(count))
    else:
        out = block(x, TokenLayout.dense(3, 5), TailQueries(count))
    torch.testing.assert_close(out, full[:, 5 - count :], atol=1e-12, rtol=0)


def test_gathered_queries_are_the_gathered_full_output():
    block = make_block()
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    indices = torch.tensor([[5, 0, 0, 3], [1, 2, 4, 4]])
    out = block(x, TokenLayout.dense(2, 6), GatheredQueries(indices))
    full = Block.forward(block, x)
    torch.testing.assert_close(out, full[torch.arange(2)[:, None], indices], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="dense layout"):
        block(x.reshape(12, DIM), TokenLayout(2, 6, torch.arange(12)), GatheredQueries(indices))


def test_structure_restricts_attention():
    """A slot that may attend only to itself is its own MLP-and-projection of itself."""
    block = make_block()
    x = torch.randn(2, 4, DIM, dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.bool)
    out = block(x, TokenLayout(2, 4, None, eye))
    for j in range(4):
        alone = Block.forward(block, x[:, j : j + 1])
        torch.testing.assert_close(out[:, j], alone[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_bf16_attention_on_cpu_matches_float64(with_mask):
    """The CPU bf16 path (two batched products) computes softmax attention: against
    float64 on the same rounded inputs, within bf16's precision."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=generator) for _ in range(3))
    mask = valid_mask([7, 3, 5])[:, None, None, :] if with_mask else None
    q16, k16, v16 = (t.bfloat16() for t in (q, k, v))
    got = attention(q16, k16, v16, mask)
    assert got.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q16.double(), k16.double(), v16.double(), attn_mask=mask)
    torch.testing.assert_close(got.double(), want, atol=0.03, rtol=0.02)
    # The fp32 path is torch's fused kernel, exact to float precision.
    torch.testing.assert_close(
        attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )


def test_attention_bias_is_the_mask_as_scores():
    """0 where the mask allows attending, -inf where not, in bf16; None without a mask."""
    structure = torch.rand(5, 5, generator=torch.Generator().manual_seed(1)) > 0.4
    layout = TokenLayout.packing(
        3, 5, valid_mask(LENGTHS).flatten().nonzero().squeeze(1), structure
    )
    mask, bias = layout.attention_mask, layout.attention_bias
    assert bias.dtype == torch.bfloat16 and bias.shape == mask.shape == (3, 1, 5, 5)
    assert torch.equal(bias == 0, mask) and torch.equal(bias == float("-inf"), ~mask)
    assert TokenLayout.dense(3, 5).attention_bias is None


def test_bf16_attention_adds_a_bias_as_the_mask_hides():
    """On the CPU bf16 path, adding the bias gives the masked attention's outputs and
    gradients exactly (the packed block passes the bias there)."""
    generator = torch.Generator().manual_seed(2)
    structure = torch.rand(7, 7, generator=generator) > 0.5
    structure[:, 0] = True  # every row may attend to a real slot (slot 0 is real)
    layout = TokenLayout.packing(
        3, 7, valid_mask([7, 3, 5]).flatten().nonzero().squeeze(1), structure
    )
    q, k, v = (torch.randn(3, 2, 7, 8, generator=generator).bfloat16() for _ in range(3))
    weights = torch.randn(3, 2, 7, 8, generator=generator).bfloat16()
    results = []
    for mask in (layout.attention_mask, layout.attention_bias):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = attention(*inputs, mask)
        (out * weights).sum().backward()
        results.append([out, *(t.grad for t in inputs)])
    for from_mask, from_bias in zip(*results, strict=True):
        assert torch.equal(from_mask, from_bias)


def test_packed_stochastic_depth_drops_whole_sequences():
    block = make_block(drop_path=0.5).train()
    layout = TokenLayout.from_valid(valid_mask([6, 1, 3, 6, 2, 6, 4, 5]))
    branch = torch.ones(layout.spare + layout.slots.shape[0], DIM, dtype=torch.float64)
    torch.manual_seed(3)
    out = block._drop_path(block.drop_path1, branch, layout, packed=True)
    per_sequence = layout.to_padded(out)[..., 0]
    valid = valid_mask([6, 1, 3, 6, 2, 6, 4, 5])
    kept = []
    for s in range(8):
        values = per_sequence[s][valid[s]].unique()
        assert len(values) == 1 and values.item() in (0.0, 2.0)  # 1 / keep_prob when kept
        kept.append(values.item() > 0)
    assert any(kept) and not all(kept)
    # Outside training nothing is dropped.
    block.eval()
    assert torch.equal(block._drop_path(block.drop_path1, branch, layout, packed=True), branch)
