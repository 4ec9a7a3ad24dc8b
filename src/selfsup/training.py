"""The one training loop every method shares."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from selfsup import distributed
from selfsup.batches import BatchPlan, MethodInputs, method_inputs
from selfsup.checkpoints import TrainingCheckpoints
from selfsup.config import TrainingConfig
from selfsup.data.preprocessing import NormalizedImages
from selfsup.methods.base import PretrainingMethod
from selfsup.monitors import TrainingMonitor
from selfsup.precision import trains_in_bf16
from selfsup.schedules import cosine_schedule, warmup_cosine_schedule

logger = logging.getLogger(__name__)

# Loader processes `loader_workers: auto` starts on CUDA: enough to keep masks, crops and
# views ahead of a small model's step.
AUTO_CUDA_LOADER_WORKERS = 4


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "training.device=cuda but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    return torch.device(name)


def resolve_loader_workers(setting: int | str, device: torch.device) -> int:
    """`training.loader_workers`: `auto` is 4 on CUDA and 0 on the CPU."""
    if setting == "auto":
        return AUTO_CUDA_LOADER_WORKERS if device.type == "cuda" else 0
    return int(setting)


def parameter_groups(module: torch.nn.Module) -> list[dict]:
    """AdamW groups: weight decay on matrices only, none on biases and 1-D params."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "apply_weight_decay": True},
        {"params": no_decay, "apply_weight_decay": False, "weight_decay": 0.0},
    ]


# Monitors shown in the progress bar, with their short names there.
_PROGRESS_METRICS = {"rankme": "rankme", "knn_val_accuracy": "knn"}


def _seed_stochastic_layers(seed: int, step: int) -> None:
    """Dropout and stochastic depth draw from torch's global generator: reseeded from
    (seed, step, rank) every step, so a resumed run needs no saved generator state."""
    key = [seed, 0x64726F70, step, distributed.rank()]  # 0x64726F70: "drop"
    torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))


def train(
    method: PretrainingMethod,
    images: torch.Tensor | NormalizedImages,
    config: TrainingConfig,
    seed: int,
    description: str = "pretrain",
    on_epoch_end: Callable[[int, PretrainingMethod], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
    checkpoints: TrainingCheckpoints | None = None,
    monitor: TrainingMonitor | None = None,
) -> pd.DataFrame:
    """Pretrain `method` on normalized images (N, C, H, W); returns per-step history.

    `images` is a tensor (moved to the device whole) or `NormalizedImages`, which reads
    each batch from a (memory-mapped) uint8 array, for datasets larger than memory.

    Every random choice (order, masks, crops, views, dropout) is a function of `seed`,
    the epoch or step, and the image's row (`selfsup.batches`), so the result does not
    depend on loader workers, gradient accumulation or the number of processes (up to
    float rounding). `on_epoch_end` is called with the finished epoch's index and the
    method (e.g. to probe it); `on_step` with each step's history row as it is recorded
    (e.g. to log it live); both only in the main process.

    Under `torchrun`, each process trains a replica with DistributedDataParallel on its
    share of every global batch of `config.batch_size`; losses are averaged over
    processes for the history, and only rank 0 writes checkpoints.

    With `monitor`, the history also records the representation monitors (RankMe,
    normalized std, method metrics every `monitor.config.every_steps` steps; val kNN
    accuracy at the end of every `knn_every_epochs`-th epoch) and the collapse rule may
    warn or stop the run (`selfsup.monitors`).

    With `checkpoints`, the full training state is saved every `config.checkpoint_every`
    steps and at the end; with `config.resume`, training continues from the newest
    checkpoint (its history rows are replayed through `on_step` first) and ends with
    the same weights as a run that was never interrupted.
    """
    device = distributed.training_device(resolve_device(config.device))
    distributed.ensure_process_group(device)
    main = distributed.is_main_process()
    plan = BatchPlan(
        config.batch_size,
        distributed.world_size(),
        distributed.rank(),
        config.accumulation_steps,
    )
    num_images = images.shape[0]
    if num_images < config.batch_size:
        raise ValueError(
            f"training.batch_size={config.batch_size} exceeds the {num_images} "
            "training images; lower the batch size"
        )
    if config.compile and device.type == "cpu" and not shutil.which("c++"):
        raise RuntimeError(
            "training.compile: true on CPU needs a C++ compiler (c++ on PATH) for "
            "torch.compile's generated kernels; install one (e.g. g++) or set compile: false"
        )
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    method.to(device)
    if isinstance(images, torch.Tensor):
        images = images.to(device)
    use_bf16 = trains_in_bf16(config.precision, device)

    groups = parameter_groups(method)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    steps_per_epoch = plan.steps_per_epoch(num_images)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    history: list[dict] = []
    step, elapsed_before = 0, 0.0
    resumed = checkpoints.load_latest() if checkpoints and config.resume and main else None
    resumed = distributed.broadcast_from_main(resumed)
    if resumed is not None:
        method.load_state_dict(resumed["method"])
        optimizer.load_state_dict(resumed["optimizer"])
        history, step = resumed["history"], resumed["step"]
        elapsed_before = history[-1]["elapsed_s"] if history else 0.0
        if monitor is not None:
            monitor.resume(method, history)
        for row in history:
            if on_step is not None and main:
                on_step(row)
    elif checkpoints is not None and main:
        checkpoints.clear()  # from an earlier run: never mix two runs' checkpoints

    model: torch.nn.Module = method
    ddp = None
    if distributed.is_running():
        model = ddp = DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    if config.compile:
        model = torch.compile(model)
    inputs = MethodInputs(
        images, method.input_sampler(), config.crop_scale, config.horizontal_flip_p
    )
    method.train()
    # Redraw often on a terminal; in a log file every redraw is a line, so rarely.
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc=description,
        unit="step",
        mininterval=0.5 if sys.stderr.isatty() else 15.0,
        disable=not main,
    )
    start = time.perf_counter() - elapsed_before
    elapsed = elapsed_before
    shown: dict[str, float] = {}  # the latest monitors, for the progress bar
    # One loader for the whole run: its workers start once, not every epoch.
    micro_batches = method_inputs(
        inputs,
        plan.remaining_micro_batches(num_images, seed, step, config.epochs),
        resolve_loader_workers(config.loader_workers, device),
        pin_memory=device.type == "cuda",
    )
    for epoch in range(step // steps_per_epoch, config.epochs):
        for _ in range(step, (epoch + 1) * steps_per_epoch):
            lr = warmup_cosine_schedule(
                config.start_lr, config.lr, config.final_lr, warmup_steps, step, total_steps
            )
            weight_decay = cosine_schedule(*config.weight_decay, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group["apply_weight_decay"]:
                    group["weight_decay"] = weight_decay

            _seed_stochastic_layers(seed, step)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for micro in range(plan.accumulation_steps):
                batch = {k: v.to(device, non_blocking=True) for k, v in next(micro_batches).items()}
                last = micro == plan.accumulation_steps - 1
                # Gradients are averaged over processes once, after the last micro-batch.
                with nullcontext() if last or ddp is None else ddp.no_sync():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        loss = model(batch) / plan.accumulation_steps
                    loss.backward()
                loss_sum += loss.detach()
            loss_value = distributed.mean_over_ranks(loss_sum).item()
            if not math.isfinite(loss_value):
                progress.close()
                raise NonFiniteLossError(
                    f"{description}: loss is {loss_value} at step {step} (epoch {epoch}, "
                    f"lr {lr:.3g}); lower training.lr or set training.grad_clip"
                )
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
            optimizer.step()
            logged = method.after_optimizer_step(step, total_steps)

            elapsed = time.perf_counter() - start
            # Monitors compute in the training precision: in bf16 they cost a third.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if monitor is not None and monitor.due_at_step(step):
                    logged.update(monitor.representation(method, step))
                if monitor is not None and step + 1 == (epoch + 1) * steps_per_epoch:
                    if monitor.due_at_epoch_end(epoch):
                        logged.update(monitor.knn_accuracy(method))
            monitored = {k: v for k, v in logged.items() if k in _PROGRESS_METRICS}
            shown.update(monitored)
            row = {
                "step": step,
                "epoch": epoch,
                "loss": loss_value,
                "lr": lr,
                "weight_decay": weight_decay,
                **logged,
                "images_seen": (step + 1) * config.batch_size,
                "elapsed_s": elapsed,
            }
            history.append(row)
            if on_step is not None and main:
                on_step(row)
            step += 1
            if checkpoints is not None and main and checkpoints.due(step, total_steps):
                checkpoints.save(
                    {
                        "step": step,
                        "epoch": epoch,
                        "method": method.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "history": history,
                    }
                )
            progress.update(1)
            progress.set_postfix(
                epoch=f"{epoch + 1}/{config.epochs}",
                loss=f"{loss_value:.4f}",
                img_s=f"{step * config.batch_size / elapsed:.0f}",
                **{_PROGRESS_METRICS[k]: f"{v:.3g}" for k, v in shown.items()},
            )
        if on_epoch_end is not None and main:
            on_epoch_end(epoch, method)
            method.train()
    progress.close()
    method.eval()
    if main:
        logger.info(
            "%s: %d steps in %.1f s (%.0f images/s) on %d x %s, final loss %.4f",
            description,
            total_steps,
            elapsed,
            total_steps * config.batch_size / elapsed,
            plan.world_size,
            device,
            history[-1]["loss"],
        )
    return pd.DataFrame(history)
