"""Transformer blocks over sequences of different lengths, without padding.

A masked encoder sees a different number of patches per image. Padding every sequence
to the longest makes each layer norm, projection and MLP compute on empty slots too;
here the tokens of a batch are *packed* (one (T, D) tensor of real tokens) and only
attention, which needs its sequences apart, sees them padded, with the empty slots
hidden as keys. `TokenBlock` is timm's `Block` (same parameters and names, so weights
load either way) with this forward; no library offers varlen attention on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def packed_rows(count: int) -> int:
    """Rows of a packed tensor holding `count` tokens: rounded up to a sixteenth of the
    largest power of two below it (at most 1/16 more), so that batches whose token counts
    differ a little share one shape. Each new shape costs: oneDNN compiles bf16 matrix
    kernels per shape on the CPU, and a step whose shapes changed every time ran at two
    thirds of the speed of one whose shapes repeated (docs/training-speed.md)."""
    step = max(8, 1 << max(count.bit_length() - 5, 0))
    return -(-count // step) * step


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of `num_sequences` sequences of at most `length` tokens sit.

    Dense (`slots` None): tokens are a (S, L, D) tensor, every sequence full.
    Packed: tokens are a (spare + T, D) tensor: `spare` rows that belong to no sequence
    (they round the row count up, `packed_rows`; attention never sees them and their
    outputs are never read), then the T real tokens, token t at slot `slots[t]` of the
    (S, L) grid (slot s * L + j is position j of sequence s). Empty slots are hidden
    from attention. `structure` (L, L), optional: which slot may attend to which, on top
    of that.
    """

    num_sequences: int
    length: int
    slots: torch.Tensor | None = None
    structure: torch.Tensor | None = None
    spare: int = 0

    @classmethod
    def dense(cls, num_sequences: int, length: int) -> TokenLayout:
        return cls(num_sequences, length)

    @classmethod
    def packing(
        cls,
        num_sequences: int,
        length: int,
        slots: torch.Tensor,
        structure: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Packed tokens at `slots`, with spare rows up to `packed_rows`."""
        spare = packed_rows(slots.shape[0]) - slots.shape[0]
        return cls(num_sequences, length, slots, structure, spare)

    @classmethod
    def from_valid(cls, valid: torch.Tensor | None) -> TokenLayout:
        """From a (S, L) validity mask; dense when it is all True. Reads the mask on the
        host: training builds its layouts ahead of the step instead."""
        if valid is None:
            raise ValueError("from_valid needs a mask; use TokenLayout.dense for full sequences")
        num_sequences, length = valid.shape
        if bool(valid.all()):
            return cls.dense(num_sequences, length)
        return cls.packing(num_sequences, length, valid.flatten().nonzero().squeeze(1))

    @property
    def packed(self) -> bool:
        return self.slots is not None

    def with_spare_rows(self, real: torch.Tensor) -> torch.Tensor:
        """The real tokens (T, C) -> the layout's (spare + T, C), spare rows zero."""
        return F.pad(real, (0, 0, self.spare, 0)) if self.spare else real

    def real_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The layout's tokens without the spare rows (unchanged when dense)."""
        return tokens[self.spare :] if self.spare else tokens

    def to_packed(self, padded: torch.Tensor) -> torch.Tensor:
        """(S, L, C) -> the layout's tokens: packed, or unchanged when dense."""
        if self.slots is None:
            return padded
        real = padded.reshape(-1, padded.shape[-1]).index_select(0, self.slots)
        return self.with_spare_rows(real)

    def to_padded(self, tokens: torch.Tensor) -> torch.Tensor:
        """The layout's tokens -> (S, L, C), zeros in empty slots."""
        if self.slots is None:
            return tokens
        grid = tokens.new_zeros(self.num_sequences * self.length, tokens.shape[-1])
        # In place: the out-of-place index_copy would first copy the zeros.
        grid.index_copy_(0, self.slots, self.real_tokens(tokens))
        return grid.view(self.num_sequences, self.length, -1)

    def sequence_of_tokens(self) -> torch.Tensor:
        """The sequence each packed row belongs to (spare rows: 0, never read)."""
        if self.slots is None:
            raise ValueError("a dense layout has no packed tokens")
        sequences = torch.div(self.slots, self.length, rounding_mode="floor")
        return F.pad(sequences, (self.spare, 0))

    @cached_property
    def attention_mask(self) -> torch.Tensor | None:
        """Boolean (S or 1, 1, L, L) or (S, 1, 1, L), True where a slot may attend to
        another; None when every slot may attend to every slot. Made once per layout,
        for all the blocks that use it."""
        mask = None
        if self.slots is not None:
            filled = torch.zeros(
                self.num_sequences * self.length, dtype=torch.bool, device=self.slots.device
            )
            mask = filled.index_fill(0, self.slots, True).view(self.num_sequences, 1, 1, -1)
        if self.structure is not None:
            structure = self.structure[None, None]
            mask = structure if mask is None else mask & structure
        return mask

    @cached_property
    def attention_bias(self) -> torch.Tensor | None:
        """`attention_mask` as a bf16 bias added to the scores: 0 where a slot may
        attend, -inf where it may not. Adding it gives the scores `masked_fill` gives,
        faster: filling through a broadcast boolean mask is slow on the CPU and has a
        backward of its own, an addition's backward hands the gradient on
        (docs/training-speed.md)."""
        mask = self.attention_mask
        if mask is None:
            return None
        bias = torch.zeros(mask.shape, dtype=torch.bfloat16, device=mask.device)
        return bias.masked_fill_(~mask, float("-inf"))


@dataclass(frozen=True)
class TailQueries:
    """The last `count` slots of every sequence are the only outputs wanted (in packed
    layouts, also the last S x count tokens, sequence by sequence)."""

    count: int

    def select(self, tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """The queries' rows of a layout-shaped tensor, as (S, count, C)."""
        if layout.packed:
            tail = tokens[tokens.shape[0] - layout.num_sequences * self.count :]
            return tail.view(layout.num_sequences, self.count, -1)
        return tokens[:, layout.length - self.count :]

    def mask_rows(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None or mask.shape[-2] == 1:
            return mask
        return mask[..., mask.shape[-2] - self.count :, :]


@dataclass(frozen=True)
class GatheredQueries:
    """Outputs wanted at `indices` (S, Q) of a dense layout only."""

    indices: torch.Tensor

    def select(self, tokens: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        if layout.packed or layout.structure is not None:
            raise ValueError("GatheredQueries needs a dense layout without structure")
        index = self.indices[..., None].expand(-1, -1, tokens.shape[-1])
        return torch.gather(tokens, 1, index)

    def mask_rows(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        return mask


Queries = TailQueries | GatheredQueries


def bf16_on_cpu(tensor: torch.Tensor) -> bool:
    """Whether attention on `tensor` takes the two-product path of `attention`."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.bfloat16


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Softmax attention of (S, H, Lq, d) queries over (S, H, L, d) keys and values;
    `mask` broadcasts to (S, H, Lq, L): boolean, True where attending is allowed, or
    a float bias added to the scores (-inf where not allowed).

    In bf16 on the CPU, torch's fused kernel is several times slower than two batched
    matrix products for the short sequences used here (docs/training-speed.md), so
    those are used. The softmax reads and writes bf16 (the scores
    already are, and the weights are cast to bf16 for the product anyway) and
    accumulates in float32 inside.
    """
    if bf16_on_cpu(q):
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:
            scores = scores + mask
        return torch.matmul(scores.softmax(dim=-1), v)
    if q.device.type == "cuda":
        with sdpa_kernel(_CUDA_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# cuDNN's attention builds a plan for every new sequence length, which costs a step or
# more each time here, where masks change the lengths every batch
# (docs/training-speed.md); the flash and memory-efficient kernels need no such plan.
_CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class TokenBlock(Block):
    """timm's pre-norm ViT block, run on a `TokenLayout`'s tokens.

    With `queries`, only those tokens' outputs are computed (every token still serves
    as key and value): the last block of a network whose other outputs are discarded.
    """

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        layout: TokenLayout,
        queries: Queries | None = None,
    ) -> torch.Tensor:
        attn = self.attn
        heads, head_dim = attn.num_heads, attn.head_dim
        width = heads * head_dim
        qkv = attn.qkv(self.norm1(x))
        mask = layout.attention_bias if bf16_on_cpu(qkv) else layout.attention_mask
        # split, not two slices: its backward is one concatenation, where each slice's
        # would fill a zero tensor of qkv's size.
        if queries is None:
            q, keys_values = layout.to_padded(qkv).split([width, 2 * width], dim=-1)
            residual = x
        else:
            q, keys_values = qkv.split([width, 2 * width], dim=-1)
            q = queries.select(q, layout)
            keys_values = layout.to_padded(keys_values)
            residual = queries.select(x, layout)
            mask = queries.mask_rows(mask)
        keys_values = keys_values.reshape(layout.num_sequences, layout.length, 2, heads, head_dim)
        k, v = keys_values.permute(2, 0, 3, 1, 4).unbind(0)
        q = q.reshape(q.shape[0], q.shape[1], heads, head_dim).transpose(1, 2)
        out = attention(attn.q_norm(q), attn.k_norm(k), v, mask)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], width)
        if queries is None:
            out = layout.to_packed(out)
        out = attn.proj_drop(attn.proj(attn.norm(out)))
        per_token = queries is None and layout.packed
        x = residual + self._drop_path(self.drop_path1, self.ls1(out), layout, per_token)
        branch = self.ls2(self.mlp(self.norm2(x)))
        return x + self._drop_path(self.drop_path2, branch, layout, per_token)

    def _drop_path(
        self, drop: nn.Module, branch: torch.Tensor, layout: TokenLayout, packed: bool
    ) -> torch.Tensor:
        """Stochastic depth per sequence: timm's `DropPath` draws per row of dim 0,
        which packed tokens do not have."""
        if not packed or not isinstance(drop, DropPath) or not self.training:
            return drop(branch)
        if drop.drop_prob == 0.0:
            return branch
        keep_prob = 1.0 - drop.drop_prob
        keep = branch.new_empty(layout.num_sequences).bernoulli_(keep_prob)
        if drop.scale_by_keep:
            keep.div_(keep_prob)
        return branch * keep[layout.sequence_of_tokens()].unsqueeze(-1)
