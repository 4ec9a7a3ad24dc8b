"""Weight initialization: `encoder.weight_init` reaches every network a method builds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.config import EncoderConfig
from selfsup.methods import build_method
from selfsup.methods.ijepa import IJEPA
from selfsup.models import build_encoder
from tests.helpers import TINY_ENCODER, TINY_MASKING, TINY_PREDICTOR

HYPERPARAMETERS = {
    "ijepa": {"predictor": TINY_PREDICTOR},
    "mae": {"decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
    "simclr": {"projection_head": {"hidden_dim": 64, "out_dim": 32}},
}


def weighted_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def xavier_bound(weight: torch.Tensor) -> float:
    """Glorot and Bengio's uniform bound, sqrt(6 / (fan_in + fan_out)); a convolution's
    fan_in is channels x kernel area, as if it were a linear."""
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    return math.sqrt(6.0 / (fan_in + fan_out))


def assert_xavier_uniform(layer: nn.Module, rel: float) -> None:
    weight = layer.weight.detach()
    bound = xavier_bound(weight)
    assert weight.abs().max() <= bound
    # uniform(-b, b) has std b / sqrt(3)
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=rel)
    assert torch.all(layer.bias == 0)


def test_trunc_normal_is_std_002_linears_and_pytorchs_patch_embedding():
    torch.manual_seed(0)
    config = EncoderConfig(embed_dim=64, depth=2, num_heads=2, weight_init="trunc_normal")
    encoder = build_encoder(config, 16, 4, 1)
    assert encoder.weight_init == "trunc_normal"
    for layer in weighted_layers(encoder):
        if isinstance(layer, nn.Linear):
            assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert torch.all(layer.bias == 0)
    conv = encoder.patch_embed.proj
    # PyTorch's default: uniform within 1 / sqrt(fan_in), here 1 / sqrt(16)
    assert conv.weight.abs().max() <= 0.25
    assert conv.weight.std().item() == pytest.approx(0.25 / math.sqrt(3), rel=0.1)


def test_xavier_is_the_default_and_draws_every_linear_and_the_patch_embedding():
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(embed_dim=64, depth=2, num_heads=2), 16, 4, 1)
    assert encoder.weight_init == "xavier"
    layers = weighted_layers(encoder)
    assert encoder.patch_embed.proj in layers
    assert len(layers) == 1 + 2 * 4  # patch embedding + (qkv, proj, fc1, fc2) per block
    for layer in layers:
        assert_xavier_uniform(layer, rel=0.1)
    norms = [m for m in encoder.modules() if isinstance(m, nn.LayerNorm)]
    assert all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


@pytest.mark.parametrize("name", sorted(HYPERPARAMETERS))
def test_xavier_reaches_the_predictor_decoder_and_projection_head(name):
    torch.manual_seed(0)
    encoder = TINY_ENCODER.model_copy(update={"weight_init": "xavier"})
    method = build_method(name, HYPERPARAMETERS[name], encoder, TINY_MASKING, in_chans=1)
    layers = weighted_layers(method)
    assert len(layers) > len(weighted_layers(method.evaluation_encoder()))
    for layer in layers:
        # the smallest layers hold 256 weights: their sample std is looser
        assert_xavier_uniform(layer, rel=0.25)
    if isinstance(method, IJEPA):
        target, context = method.target_encoder.state_dict(), method.context_encoder.state_dict()
        assert all(torch.equal(target[key], context[key]) for key in context)


def test_unknown_scheme_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="weight_init"):
        EncoderConfig(weight_init="kaiming")
