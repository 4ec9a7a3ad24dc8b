"""LeJEPA: SIGReg against an independent numpy Epps-Pulley statistic, the invariance
term, and the method behind the common interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.checkpoints import TrainingCheckpoints
from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig
from selfsup.methods import METHODS, build_method
from selfsup.methods.lejepa import (
    LeJEPA,
    epps_pulley,
    invariance,
    sigreg,
    unit_directions,
)
from selfsup.randomness import SampleDraws
from selfsup.training import train
from tests.helpers import tiny_training

ENCODER = EncoderConfig(embed_dim=32, depth=1, num_heads=2)
MASKING = MaskingConfig(image_size=16, patch_size=4)
SMALL = {"projector": {"hidden_dim": 32, "out_dim": 8}, "sigreg": {"directions": 32}}


def numpy_epps_pulley(x: np.ndarray, t_max: float = 3.0, knots: int = 17) -> float:
    """N * integral over [-t_max, t_max] of |ECF(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, by
    the trapezoid rule on the symmetric grid (the same knots mirrored), in complex
    arithmetic."""
    t = np.linspace(-t_max, t_max, 2 * knots - 1)
    ecf = np.exp(1j * x[:, None] * t[None]).mean(axis=0)
    normal = np.exp(-(t**2) / 2)
    integrand = np.abs(ecf - normal) ** 2 * normal
    return float(len(x) * np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(t)))


def numpy_sigreg(z: np.ndarray, directions: np.ndarray) -> float:
    projections = z @ directions
    return float(
        np.mean([numpy_epps_pulley(projections[:, m]) for m in range(directions.shape[1])])
    )


def samples(kind: str, n: int = 512, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dim))
    if kind == "collapsed":
        return np.zeros((n, dim)) + rng.standard_normal(dim)
    if kind == "shifted":
        return z + 2.0
    if kind == "anisotropic":
        return z * np.array([4.0] + [1.0] * (dim - 1))
    return z


@pytest.mark.parametrize("kind", ["normal", "collapsed", "shifted", "anisotropic"])
def test_sigreg_equals_an_independent_numpy_statistic(kind):
    z = samples(kind)
    directions = unit_directions(8, 64, np.random.default_rng(1))
    ours = sigreg(torch.from_numpy(z).float(), directions)
    expected = numpy_sigreg(z, directions.double().numpy())
    assert float(ours) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_sigreg_is_near_zero_for_a_standard_normal_and_large_otherwise():
    directions = unit_directions(8, 256, np.random.default_rng(2))
    values = {
        kind: float(sigreg(torch.from_numpy(samples(kind)).float(), directions))
        for kind in ("normal", "collapsed", "shifted", "anisotropic")
    }
    # For standard normal samples N * |ECF(t) - exp(-t^2/2)|^2 has expectation
    # 1 - exp(-t^2) at every N, so the statistic stays near the integral of that
    # against exp(-t^2/2) over [-3, 3]: sqrt(2 pi) - sqrt(2 pi / 3) = 1.06 (the tails
    # beyond 3 are negligible). Every other distribution grows with N (512 here).
    floor = np.sqrt(2 * np.pi) - np.sqrt(2 * np.pi / 3)
    assert values["normal"] == pytest.approx(floor, abs=0.25)
    for kind in ("collapsed", "shifted", "anisotropic"):
        assert values[kind] > 20 * values["normal"], (kind, values)


def test_epps_pulley_grows_with_the_batch_only_when_the_distribution_is_wrong():
    """N times a squared distance: for normal samples it stays O(1) as N grows; for
    shifted ones it grows linearly with N."""
    rng = np.random.default_rng(3)
    small, large = rng.standard_normal(256), rng.standard_normal(4096)
    normal_small = float(epps_pulley(torch.from_numpy(small)[:, None].float()))
    normal_large = float(epps_pulley(torch.from_numpy(large)[:, None].float()))
    assert normal_large < 5 * max(normal_small, 0.01)
    shifted_small = float(epps_pulley(torch.from_numpy(small + 1)[:, None].float()))
    shifted_large = float(epps_pulley(torch.from_numpy(large + 1)[:, None].float()))
    assert shifted_large / shifted_small == pytest.approx(16, rel=0.2)


def test_sigreg_does_not_depend_on_the_order_of_the_batch():
    z = torch.from_numpy(samples("anisotropic")).float()
    directions = unit_directions(8, 64, np.random.default_rng(4))
    shuffled = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(sigreg(shuffled, directions), sigreg(z, directions))


def test_directions_are_unit_vectors_drawn_from_the_generator():
    first = unit_directions(16, 256, np.random.default_rng(5))
    assert first.shape == (16, 256)
    torch.testing.assert_close(first.norm(dim=0), torch.ones(256))
    assert torch.equal(first, unit_directions(16, 256, np.random.default_rng(5)))


def test_invariance_is_zero_when_all_views_agree_and_the_mean_squared_spread_otherwise():
    agreeing = torch.randn(1, 6, 8).expand(4, 6, 8)
    assert float(invariance(agreeing)) == 0.0
    z = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    spread = (z.numpy() - z.numpy().mean(axis=0, keepdims=True)) ** 2
    assert float(invariance(z)) == pytest.approx(float(spread.mean()), rel=1e-6)


def test_with_local_views_the_centre_is_the_mean_of_the_global_views_alone():
    z = torch.randn(5, 6, 8, generator=torch.Generator().manual_seed(1))  # 2 global, 3 local
    views = z.numpy()
    centre = views[:2].mean(axis=0, keepdims=True)
    expected = ((views - centre) ** 2).mean()
    assert float(invariance(z, global_views=2)) == pytest.approx(float(expected), rel=1e-6)
    # Local views that agree with the global views' centre add nothing.
    agreeing = torch.cat([z[:2], z[:2].mean(dim=0, keepdim=True).expand(3, 6, 8)])
    torch.testing.assert_close(
        invariance(agreeing, global_views=2) * 5 / 2, invariance(z[:2]), rtol=1e-6, atol=0
    )


def tiny_lejepa(**hyperparameters) -> LeJEPA:
    torch.manual_seed(0)
    return build_method("lejepa", {**SMALL, **hyperparameters}, ENCODER, MASKING, in_chans=1)


def test_registered_and_validated_by_name():
    assert METHODS["lejepa"] is LeJEPA
    with pytest.raises(ValueError, match="sigreg_weight"):
        PretrainingConfig(method="lejepa", hyperparameters={"sigreg_weight": 1.0})
    with pytest.raises(ValueError, match="views"):
        PretrainingConfig(method="lejepa", hyperparameters={"views": 1})
    with pytest.raises(ValueError, match="local_views.crop_scale"):
        PretrainingConfig(
            method="lejepa", hyperparameters={"local_views": {"crop_scale": [0.5, 1.5]}}
        )


@pytest.mark.parametrize("size", [6, 16, 20, 0])
def test_a_local_size_off_the_patch_grid_or_not_below_the_image_is_refused(size):
    local = {"count": 2, "image_size": size}
    with pytest.raises(ValueError, match="image_size"):  # 0 fails the field's own bound
        tiny_lejepa(local_views=local)
    tiny_lejepa(local_views={"count": 0, "image_size": size or 1})  # unused: not checked


def test_inputs_hold_every_view_and_one_draw_of_directions_per_step():
    method = tiny_lejepa(views=3)
    images = torch.randn(5, 1, 16, 16)
    draws = SampleDraws(0, 0, 7, np.arange(5))
    inputs = method.input_sampler()(images, draws)
    assert inputs["views"].shape == (3, 5, 1, 16, 16)
    assert inputs["directions"].shape == (8, 32)
    # Another micro-batch (other rows) of the same step shares the directions.
    other = method.input_sampler()(images[:2], SampleDraws(0, 0, 7, np.arange(10, 12)))
    assert torch.equal(other["directions"], inputs["directions"])
    next_step = method.input_sampler()(images, SampleDraws(0, 0, 8, np.arange(5)))
    assert not torch.equal(next_step["directions"], inputs["directions"])
    assert "local_views" not in inputs


def test_local_views_are_smaller_drawn_apart_and_leave_the_global_views_as_they_were():
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    draws = SampleDraws(0, 0, 7, np.arange(5))
    local = {"count": 2, "image_size": 8, "crop_scale": [0.2, 0.5]}
    inputs = tiny_lejepa(views=3, local_views=local).input_sampler()(images, draws)
    without = tiny_lejepa(views=3).input_sampler()(images, draws)
    assert inputs["local_views"].shape == (2, 5, 1, 8, 8)
    assert torch.equal(inputs["views"], without["views"])
    assert not torch.equal(inputs["local_views"][0], inputs["local_views"][1])
    # Unset, the local size is half the image's in whole patches: 8 px of 16 with patch 4.
    halves = tiny_lejepa(local_views={"count": 1}).input_sampler()(images, draws)
    assert halves["local_views"].shape == (1, 5, 1, 8, 8)


@pytest.mark.parametrize("local_count", [0, 2])
def test_loss_is_the_weighted_sum_of_its_two_terms(local_count):
    local = {"count": local_count, "image_size": 8}
    method = tiny_lejepa(sigreg_weight=0.3, views=2, local_views=local)
    method.train()
    inputs = method.input_sampler()(torch.randn(6, 1, 16, 16), SampleDraws.first_batch(6))
    loss = method.training_loss(inputs)
    z = method.embeddings(inputs)
    assert z.shape == (2 + local_count, 6, 8)
    sigreg_part = method.sigreg_term(z, inputs["directions"])
    torch.testing.assert_close(loss, 0.3 * sigreg_part + 0.7 * invariance(z, global_views=2))
    per_view = [sigreg(view, inputs["directions"]) for view in z]
    torch.testing.assert_close(sigreg_part, torch.stack(per_view).mean())


def test_a_short_training_lowers_the_loss_and_keeps_the_embeddings_spread():
    method = tiny_lejepa()
    images = torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    history = train(method, images, tiny_training(epochs=6, batch_size=16, lr=3e-3), seed=0)
    losses = history["loss"].to_numpy()
    assert np.isfinite(losses).all()
    assert losses[-3:].mean() < losses[:3].mean()
    method.eval()
    with torch.no_grad():
        features = method.encoder(images).mean(dim=1)
    assert features.std(dim=0).mean() > 1e-3


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    """The projector's BatchNorm statistics and the per-step SIGReg directions come back
    with the checkpoint: resuming mid-epoch ends on the same weights, bit for bit."""
    images = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    training = {"epochs": 3, "batch_size": 16, "checkpoint_every": 3}
    reference = tiny_lejepa()
    train(reference, images, tiny_training(**training), seed=0)

    def stop_after_four(row: dict) -> None:
        if row["step"] + 1 == 4:
            raise Interrupted

    folder = tmp_path / "checkpoints"
    with pytest.raises(Interrupted):
        train(
            tiny_lejepa(),
            images,
            tiny_training(**training),
            seed=0,
            on_step=stop_after_four,
            checkpoints=TrainingCheckpoints(folder, 3, 2, {"run": "lejepa"}),
        )
    torch.manual_seed(99)  # other initial weights: everything must come from the checkpoint
    resumed = build_method("lejepa", SMALL, ENCODER, MASKING, in_chans=1)
    train(
        resumed,
        images,
        tiny_training(**training, resume=True),
        seed=0,
        checkpoints=TrainingCheckpoints(folder, 3, 2, {"run": "lejepa"}),
    )
    state = resumed.state_dict()
    assert any("running_mean" in name for name in state)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, state[name]), name
