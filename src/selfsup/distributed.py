"""Data-parallel training with torch.distributed: the process group and the few
collectives the training loop needs.

Processes are started by `torchrun` (one machine or several), which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without those, training runs in
one process and every function here is a no-op.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_functional


def launched_with_torchrun() -> bool:
    """True in a process `torchrun` started for a world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_running() -> bool:
    """True when a process group of more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank; from torchrun's RANK before the group is joined."""
    if is_running():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_with_torchrun() else 0


def world_size() -> int:
    return dist.get_world_size() if is_running() else 1


def is_main_process() -> bool:
    """Rank 0, the one process that writes checkpoints, logs and catalog outputs."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def ensure_process_group(device: torch.device) -> None:
    """Join the process group `torchrun` described, once per process: NCCL between
    GPUs (each process on GPU LOCAL_RANK), gloo between CPU processes."""
    if not launched_with_torchrun() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(_leave_process_group)


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def training_device(device: torch.device) -> torch.device:
    """CUDA device LOCAL_RANK for a torchrun process, else `device` unchanged."""
    if device.type == "cuda" and launched_with_torchrun():
        return torch.device("cuda", local_rank())
    return device


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: gloo's all-to-all, which
    returns an all_gather's gradients to their ranks, misreads strided tensors (a
    gathered tensor used transposed got gradients off by a few per cent)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return gradient.contiguous()


def gather_with_gradients(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor`, concatenated in rank order along dim 0; gradients flow
    back to the rank each row came from."""
    parts = dist_functional.all_gather(tensor.contiguous())
    return torch.cat([_ContiguousGradient.apply(part) for part in parts])


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over ranks, for logging."""
    if not is_running():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def broadcast_from_main(obj: object) -> object:
    """Rank 0's `obj` on every rank (e.g. a checkpoint only rank 0 can read)."""
    if not is_running():
        return obj
    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
