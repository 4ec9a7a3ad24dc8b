"""Data-parallel training (gloo, 2 CPU processes) against one process on the same
global batch, and the batch plan that makes them equal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from selfsup import distributed
from selfsup.batches import BatchPlan
from selfsup.config import MaskingConfig
from selfsup.methods import build_method
from selfsup.randomness import SampleDraws
from selfsup.training import train
from tests.helpers import TINY_ENCODER, TINY_PREDICTOR, assert_same_weights, tiny_training
from tests.project import free_port

MASKING = MaskingConfig(image_size=16, patch_size=4)
HYPERPARAMETERS = {
    "ijepa": {"predictor": TINY_PREDICTOR},
    "mae": {"decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
    "simclr": {"projection_head": {"hidden_dim": 32, "out_dim": 16}},
    # BatchNorm off: per process on the CPU, it would make 2 processes differ from 1.
    "lejepa": {
        "views": 3,
        "local_views": {"count": 2, "image_size": 8},
        "projector": {"hidden_dim": 32, "out_dim": 8, "batch_norm": False},
        "sigreg": {"directions": 16},
    },
}
# 40 images, global batch 16: 2 steps per epoch, 2 epochs, warmup 1 epoch.
TRAINING = {"epochs": 2, "batch_size": 16, "crop_scale": (0.5, 1.0), "lr": 3e-3}


def dataset() -> torch.Tensor:
    return torch.randn(40, 1, 16, 16, generator=torch.Generator().manual_seed(3))


def trained(method_name: str, **training) -> tuple[dict, list[float]]:
    torch.manual_seed(0)
    method = build_method(method_name, HYPERPARAMETERS[method_name], TINY_ENCODER, MASKING, 1)
    history = train(method, dataset(), tiny_training(**TRAINING, **training), seed=7)
    return method.state_dict(), history["loss"].tolist()


def _as_torchrun_would(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun sets for one process, on one thread."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def _rank(rank: int, world_size: int, port: int, out: str, training: dict) -> None:
    """One torchrun-like process: the environment torchrun would set, then train."""
    _as_torchrun_would(rank, world_size, port)
    results = {name: trained(name, **training) for name in HYPERPARAMETERS}
    # Proof the ranks trained as one group, not as two single processes.
    results["group"] = (distributed.rank(), distributed.world_size())
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    """Both ranks' weights and losses for every method, trained with gloo."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(2, free_port(), str(out), {}), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    return {name: trained(name) for name in HYPERPARAMETERS}


def test_the_processes_trained_as_one_group(two_processes):
    assert [result["group"] for result in two_processes] == [(0, 2), (1, 2)]


@pytest.mark.parametrize("method_name", list(HYPERPARAMETERS))
def test_both_ranks_hold_identical_weights(two_processes, method_name):
    (weights_0, losses_0), (weights_1, losses_1) = (r[method_name] for r in two_processes)
    assert losses_0 == losses_1  # all-reduced for the history
    for name, value in weights_0.items():
        assert torch.equal(value, weights_1[name]), name


@pytest.mark.parametrize("method_name", list(HYPERPARAMETERS))
def test_two_processes_train_the_model_of_one_on_the_same_global_batch(
    two_processes, one_process, method_name
):
    """Masks, crops and views are keyed by image, the loss is a mean over the global
    batch (SimCLR's negatives gathered from both ranks), so two processes of 8 images
    reach the weights of one process of 16, up to float rounding."""
    weights, losses = two_processes[0][method_name]
    single_weights, single_losses = one_process[method_name]
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    moved = 0.0
    assert_same_weights(weights, single_weights, atol=2e-5, rtol=1e-4)
    for name, value in single_weights.items():
        moved = max(moved, (value - trained_init(method_name)[name]).abs().max().item())
    assert moved > 1e-3  # training changed the weights: the comparison is not vacuous


_INIT: dict[str, dict] = {}


def trained_init(method_name: str) -> dict:
    if method_name not in _INIT:
        torch.manual_seed(0)
        method = build_method(method_name, HYPERPARAMETERS[method_name], TINY_ENCODER, MASKING, 1)
        _INIT[method_name] = method.state_dict()
    return _INIT[method_name]


@pytest.mark.parametrize("method_name", ["ijepa", "mae"])
def test_gradient_accumulation_trains_the_model_of_the_whole_batch(one_process, method_name):
    weights, losses = trained(method_name, accumulation_steps=4)
    single_weights, single_losses = one_process[method_name]
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    assert_same_weights(weights, single_weights, atol=2e-5, rtol=1e-4)


def test_simclr_accumulation_takes_negatives_from_the_micro_batch(one_process):
    """Documented: accumulated SimCLR sees fewer negatives per anchor, so its loss is
    lower than the whole batch's (log of 2*4-1 candidates, not 2*16-1)."""
    _, losses = trained("simclr", accumulation_steps=4)
    _, single_losses = one_process["simclr"]
    assert losses[0] < single_losses[0] - 0.5


def test_global_batch_rows_do_not_depend_on_the_number_of_processes():
    """DistributedSampler deals the permutation round-robin; the union of the ranks'
    micro-batches at each step is the single process's batch."""
    num_images, seed = 103, 5
    single = BatchPlan(24).micro_batches(num_images, seed, epoch=1, first_step=0)
    assert len(single) == 103 // 24
    for world, accumulation in [(2, 1), (4, 3), (3, 2)]:
        parts = [
            BatchPlan(24, world, rank, accumulation).micro_batches(num_images, seed, 1, 0)
            for rank in range(world)
        ]
        for step, whole in enumerate(single):
            pieces = [d for rank_plan in parts for d in rank_plan if d.step == whole.step]
            assert len(pieces) == world * accumulation
            assert all(len(d) == 24 // (world * accumulation) for d in pieces)
            assert all(d.epoch == 1 and d.step == step + 4 for d in pieces)
            got = np.sort(np.concatenate([d.indices for d in pieces]))
            np.testing.assert_array_equal(got, np.sort(whole.indices))
    # Epochs differ; a resumed epoch starts at its step.
    assert not np.array_equal(
        BatchPlan(24).micro_batches(num_images, seed, 0, 0)[0].indices, single[0].indices
    )
    assert BatchPlan(24).micro_batches(num_images, seed, 1, 6)[0].step == 6


def test_batch_that_does_not_divide_into_processes_is_refused():
    with pytest.raises(
        ValueError, match=r"batch_size=30 .* 4 process\(es\) x training.accumulation_steps=2"
    ):
        BatchPlan(30, world_size=4, accumulation_steps=2)


def lejepa_gradients(rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The gradient of LeJEPA's loss for the images `rows` of `dataset()`, at step 0; in
    a process group, averaged over ranks as DistributedDataParallel does."""
    torch.manual_seed(0)
    method = build_method("lejepa", HYPERPARAMETERS["lejepa"], TINY_ENCODER, MASKING, 1)
    method.train()
    loss = method.loss_on(dataset()[rows], SampleDraws(7, 0, 0, rows))
    loss.backward()
    gradients = {}
    for name, parameter in method.named_parameters():
        gradient = parameter.grad.detach().clone()
        if distributed.is_running():
            torch.distributed.all_reduce(gradient)
            gradient /= distributed.world_size()
        gradients[name] = gradient
    return gradients


def _lejepa_rank(rank: int, world_size: int, port: int, out: str) -> None:
    _as_torchrun_would(rank, world_size, port)
    distributed.ensure_process_group(torch.device("cpu"))
    rows = np.arange(16)[rank::world_size]
    torch.save(lejepa_gradients(rows), Path(out) / f"rank{rank}.pt")


def test_lejepa_sigreg_over_two_processes_has_the_gradient_of_one_process(tmp_path):
    """SIGReg's statistic is over the global batch: each process gathers every
    process's projections with their gradients, so two processes of 8 images give the
    gradient of one process of 16 (a per-process statistic would not: N halves)."""
    mp.spawn(_lejepa_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    rows = np.concatenate([np.arange(16)[0::2], np.arange(16)[1::2]])
    single = lejepa_gradients(rows)
    for name, expected in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], expected, atol=1e-6, rtol=1e-4)
    assert max(g.abs().max().item() for g in single.values()) > 1e-4
