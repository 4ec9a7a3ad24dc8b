"""A fourth method plugs in through the interface alone: config, registry, loop, node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from torch import nn

from selfsup.config import MaskingConfig, PretrainingConfig, StrictModel
from selfsup.methods import METHODS, InputSpec, PretrainingMethod, build_method, register_method
from selfsup.methods.ijepa import IJEPA
from selfsup.models import VisionTransformerEncoder
from selfsup.models.vit import encoder_from_checkpoint
from selfsup.pipelines.pretraining.nodes import pretrain
from selfsup.randomness import SampleDraws
from selfsup.training import train
from tests.helpers import TINY_ENCODER, tiny_training

MASKING = MaskingConfig(image_size=16, patch_size=4)  # 4x4 grid: cheap


class ToyConfig(StrictModel):
    noise_std: float = Field(0.1, gt=0)


@dataclass(frozen=True)
class ToyNoise:
    """Gaussian noise per image, from that image's own generator."""

    std: float

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        noise = np.stack([rng.standard_normal(images.shape[1:]) for rng in draws.per_sample("toy")])
        return {"images": images, "noise": self.std * torch.from_numpy(noise).to(images)}


class ToyMethod(PretrainingMethod):
    """Predict each image's mean pixel from the pooled features of a noised copy."""

    name = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig, encoder: VisionTransformerEncoder, data: InputSpec):
        super().__init__(config, encoder, data)
        self.config = config
        self.data = data
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, 1)
        self.steps_seen = 0

    def input_sampler(self) -> ToyNoise:
        return ToyNoise(self.config.noise_std)

    def training_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        images = inputs["images"]
        pooled = self.encoder(images + inputs["noise"]).mean(dim=1)
        return F.mse_loss(self.head(pooled).squeeze(-1), images.mean(dim=(1, 2, 3)))

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.steps_seen += 1
        return {"fraction_done": (step + 1) / total_steps}

    def evaluation_encoder(self) -> VisionTransformerEncoder:
        return self.encoder


@pytest.fixture
def toy():
    """ToyMethod registered as `toy` for one test, removed afterwards."""
    assert "toy" not in METHODS
    register_method(ToyMethod)
    yield ToyMethod
    METHODS.pop("toy", None)


def build_toy(seed: int = 0, **hyperparameters) -> ToyMethod:
    torch.manual_seed(seed)
    return build_method("toy", hyperparameters, TINY_ENCODER, MASKING, in_chans=1)


def test_unregistered_name_is_rejected():
    assert "toy" not in METHODS
    with pytest.raises(ValidationError, match="unknown method 'toy'"):
        PretrainingConfig(method="toy")
    with pytest.raises(ValueError, match="unknown method 'toy'"):
        build_method("toy", {}, TINY_ENCODER, MASKING, in_chans=1)


def test_registered_method_hyperparameters_are_validated_by_its_config(toy):
    assert METHODS["toy"] is toy
    config = PretrainingConfig(method="toy", hyperparameters={"noise_std": 0.2})
    assert config.method == "toy"
    assert toy.config_class.model_validate(config.hyperparameters).noise_std == 0.2
    with pytest.raises(ValidationError, match="noise_std"):
        PretrainingConfig(method="toy", hyperparameters={"noise_std": -1.0})
    with pytest.raises(ValidationError, match="noise_sdt"):
        PretrainingConfig(method="toy", hyperparameters={"noise_sdt": 0.2})


def test_build_method_builds_the_registered_class(toy):
    normalization = {"mean": [0.4], "std": [0.2]}
    torch.manual_seed(0)
    method = build_method(
        "toy", {"noise_std": 0.3}, TINY_ENCODER, MASKING, in_chans=1, normalization=normalization
    )
    assert type(method) is toy
    assert isinstance(method.config, ToyConfig)
    assert method.config.noise_std == 0.3
    assert isinstance(method.encoder, VisionTransformerEncoder)
    assert method.encoder.embed_dim == TINY_ENCODER.embed_dim
    assert method.encoder.grid == MASKING.grid_size
    assert method.encoder.patch_embed.proj.in_channels == 1
    assert method.data == InputSpec(1, MASKING, (0.4,), (0.2,))
    with pytest.raises(ValidationError, match="noise_std"):
        build_toy(noise_std=0.0)


def test_shared_loop_trains_the_toy_method(toy, images):
    method = build_toy()
    before = {k: v.clone() for k, v in method.encoder.state_dict().items()}
    config = tiny_training(epochs=2, batch_size=4, warmup_epochs=0)
    history = train(method, images[:16], config, seed=0)
    steps = 2 * (16 // 4)
    assert len(history) == steps
    assert history["step"].tolist() == list(range(steps))
    assert history["epoch"].tolist() == [0] * 4 + [1] * 4
    assert np.isfinite(history["loss"]).all()
    assert history["images_seen"].tolist() == [4 * (s + 1) for s in range(steps)]
    # Values the method logs after each step land in the history.
    assert history["fraction_done"].tolist() == pytest.approx(
        [(s + 1) / steps for s in range(steps)]
    )
    assert method.steps_seen == steps
    assert "momentum" not in history
    after = method.encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "patch_embed.proj.weight" in changed
    assert "blocks.0.attn.qkv.weight" in changed
    assert not method.training  # the loop leaves the method in eval mode


def test_toy_training_is_a_function_of_the_seed(toy, images):
    config = tiny_training(epochs=1, batch_size=4, warmup_epochs=0)

    def losses(seed):
        return train(build_toy(), images[:8], config, seed=seed)["loss"].tolist()

    first = losses(0)
    assert losses(0) == first
    assert losses(1) != first


def test_a_taken_name_cannot_be_reused_by_another_class():
    class Impostor(ToyMethod):
        name = "ijepa"

    with pytest.raises(ValueError, match="already taken"):
        register_method(Impostor)
    assert METHODS["ijepa"] is IJEPA


def test_registering_the_same_class_again_is_a_no_op(toy):
    snapshot = dict(METHODS)
    assert register_method(toy) is toy
    assert register_method(IJEPA) is IJEPA
    assert METHODS == snapshot


@pytest.fixture
def small_set():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    samples = pd.DataFrame(
        {
            "label": np.tile([0, 1, 2], 4),
            "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2,
            "pretrain": [True] * 8 + [False] * 4,
        }
    )
    return images, samples


def test_pretraining_node_runs_the_toy_method(toy, small_set):
    images, samples = small_set
    normalization = {"mean": [0.5], "std": [0.3]}
    pretraining = PretrainingConfig(
        method="toy",
        hyperparameters={"noise_std": 0.2},
        training=tiny_training(epochs=2, batch_size=4, warmup_epochs=0),
    )
    checkpoint, history, _ = pretrain(
        images, samples, normalization, TINY_ENCODER, MASKING, pretraining, seed=3
    )
    # Only the 8 train-split images are used: 2 steps per epoch.
    assert len(history) == 4
    assert np.isfinite(history["loss"]).all()
    assert checkpoint["config"]["encoder"] == TINY_ENCODER.model_dump()
    assert checkpoint["config"]["image_size"] == 16
    assert checkpoint["config"]["patch_size"] == 4
    assert checkpoint["config"]["in_chans"] == 1
    encoder = encoder_from_checkpoint(checkpoint)
    # The node starts from the weights `seed` initializes; training moved them.
    initial = build_toy(seed=3).encoder.state_dict()
    trained = encoder.state_dict()
    assert set(trained) == set(initial)
    key = "patch_embed.proj.weight"
    assert not torch.equal(trained[key], initial[key])
    # 4 AdamW steps with lr <= 1e-3 move each weight by at most about 4e-3, far less
    # than the distance to another seed's initialization.
    assert (trained[key] - initial[key]).abs().max() < 5e-3
    other = build_toy(seed=4).encoder.state_dict()
    assert (trained[key] - other[key]).abs().max() > 2e-2
    with torch.no_grad():
        out = encoder(torch.zeros(2, 1, 16, 16))
    assert out.shape == (2, MASKING.num_patches, TINY_ENCODER.embed_dim)


def test_pretraining_node_uses_only_the_train_split(toy, small_set):
    images, samples = small_set
    pretraining = PretrainingConfig(
        method="toy", training=tiny_training(epochs=1, batch_size=10, warmup_epochs=0)
    )
    # 12 images but 8 in train: a batch of 10 does not fit.
    with pytest.raises(ValueError, match="8 training images"):
        pretrain(
            images, samples, {"mean": [0.5], "std": [0.3]}, TINY_ENCODER, MASKING, pretraining, 0
        )
