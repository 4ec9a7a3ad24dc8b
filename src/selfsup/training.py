"""The one training loop every method shares."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from selfsup import distributed
from selfsup.allocator import keep_freed_memory
from selfsup.batches import BatchPlan, MethodInputs, method_inputs
from selfsup.checkpoints import TrainingCheckpoints
from selfsup.data.preprocessing import NormalizedImages
from selfsup.methods.base import PretrainingMethod
from selfsup.monitors import TrainingMonitor
from selfsup.params import FloatRange, StrictModel, check_range
from selfsup.precision import trains_in_bf16
from selfsup.schedules import cosine_schedule, warmup_cosine_schedule


class TrainingConfig(StrictModel):
    """Optimizer and schedules, identical in form for every method."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 matrix instructions
    # (AMX, AVX512-BF16), fp32 elsewhere (selfsup.precision).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    start_lr: float = Field(1e-4, ge=0)
    final_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(2, ge=0)
    weight_decay: FloatRange = (0.04, 0.4)
    betas: FloatRange = (0.9, 0.999)
    grad_clip: float | None = Field(None, gt=0)
    crop_scale: FloatRange | None = None
    # Mirror each training image left to right with this probability, after the crop
    # (MAE's recipe on photos: 0.5; I-JEPA's: none).
    horizontal_flip_p: float = Field(0.0, ge=0, le=1)
    num_threads: int | None = Field(None, ge=1)
    # DataLoader processes that read, normalize, crop and mask batches ahead of the
    # step (0: the training process does it between steps; auto: 4 on CUDA, where the
    # GPU would otherwise wait for them, 0 on CPU, where they would compete with the
    # step for cores); results do not depend on it.
    loader_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    # Micro-batches per process and step: the gradient of batch_size images is summed
    # from accumulation_steps smaller forward/backward passes (less memory, same
    # result; SimCLR's negatives then come from one micro-batch, not the whole batch).
    accumulation_steps: int = Field(1, ge=1)
    # torch.compile the training step's model (faster on GPU after a compile of about
    # a minute; needs a C++ compiler on CPU).
    compile: bool = False
    # A checkpoint every this many steps (and always one at the end); the last
    # `keep_checkpoints` are kept. `resume: true` continues from the newest one.
    checkpoint_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = False

    @field_validator("weight_decay")
    @classmethod
    def _non_negative_decay(cls, value: FloatRange) -> FloatRange:
        if min(value) < 0:
            raise ValueError(f"training.weight_decay={list(value)} must be >= 0")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, value: FloatRange) -> FloatRange:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"training.betas={list(value)} must lie in [0, 1)")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _crop_scale_in_unit_interval(cls, value: FloatRange | None) -> FloatRange | None:
        return None if value is None else check_range("training.crop_scale", value, 0, 1)

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"training.warmup_epochs={self.warmup_epochs} exceeds training.epochs={self.epochs}"
            )
        return self


logger = logging.getLogger(__name__)

# Loader processes `loader_workers: auto` starts on CUDA: enough to keep masks, crops and
# views ahead of a small model's step.
AUTO_CUDA_LOADER_WORKERS = 4


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def resolve_device(name: str, setting: str = "training.device") -> torch.device:
    """`auto` picks CUDA when present, else CPU; `cuda` without a GPU is an error that
    names the `setting` it came from."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}=cuda but no CUDA device is visible; use 'auto' or 'cpu'")
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


def build_optimizer(module: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, in torch's fused implementation: one kernel per
    tensor where the default CPU path runs several small operations each (at the
    default size its step takes 0.4 of the time: benchmarks/optimizer_step.py)."""
    return torch.optim.AdamW(parameter_groups(module), lr=config.lr, betas=config.betas, fused=True)


# Monitors shown in the progress bar, with their short names there.
_PROGRESS_METRICS = {"rankme": "rankme", "knn_val_accuracy": "knn"}


def _seed_stochastic_layers(seed: int, step: int) -> None:
    """Dropout and stochastic depth draw from torch's global generator: reseeded from
    (seed, step, rank) every step, so a resumed run needs no saved generator state."""
    key = [seed, 0x64726F70, step, distributed.rank()]  # 0x64726F70: "drop"
    torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))


@dataclass
class _Run:
    """What one training run carries from step to step."""

    method: PretrainingMethod
    model: torch.nn.Module  # the method, wrapped for DDP and torch.compile as configured
    ddp: DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    config: TrainingConfig
    plan: BatchPlan
    device: torch.device
    use_bf16: bool
    main: bool
    seed: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    history: list[dict]
    step: int
    start: float  # perf_counter origin, shifted back by the time before a resume
    monitor: TrainingMonitor | None
    checkpoints: TrainingCheckpoints | None
    on_step: Callable[[dict], None] | None
    progress: tqdm
    description: str
    shown: dict[str, float] = field(default_factory=dict)  # latest monitors, for the bar


def _check_can_train(config: TrainingConfig, num_images: int, device: torch.device) -> None:
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


def _resume_or_start(
    method: PretrainingMethod,
    optimizer: torch.optim.Optimizer,
    config: TrainingConfig,
    checkpoints: TrainingCheckpoints | None,
    monitor: TrainingMonitor | None,
    on_step: Callable[[dict], None] | None,
    main: bool,
) -> tuple[list[dict], int, float]:
    """(history, step, seconds trained before): from the newest checkpoint with
    `resume`, whose history rows are replayed through `on_step`; else from scratch,
    clearing an earlier run's checkpoints."""
    resumed = checkpoints.load_latest() if checkpoints and config.resume and main else None
    resumed = distributed.broadcast_from_main(resumed)
    if resumed is None:
        if checkpoints is not None and main:
            checkpoints.clear()  # from an earlier run: never mix two runs' checkpoints
        return [], 0, 0.0
    method.load_state_dict(resumed["method"])
    optimizer.load_state_dict(resumed["optimizer"])
    history = resumed["history"]
    if monitor is not None:
        monitor.resume(method, history)
    if on_step is not None and main:
        for row in history:
            on_step(row)
    return history, resumed["step"], history[-1]["elapsed_s"] if history else 0.0


def _wrapped(
    method: PretrainingMethod, config: TrainingConfig, device: torch.device
) -> tuple[torch.nn.Module, DistributedDataParallel | None]:
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
    return model, ddp


def _progress_bar(total: int, done: int, description: str, main: bool) -> tqdm:
    # Redraw often on a terminal; in a log file every redraw is a line, so rarely.
    return tqdm(
        total=total,
        initial=done,
        desc=description,
        unit="step",
        mininterval=0.5 if sys.stderr.isatty() else 15.0,
        disable=not main,
    )


def _start_run(
    method: PretrainingMethod,
    images: torch.Tensor | NormalizedImages,
    config: TrainingConfig,
    seed: int,
    description: str,
    on_step: Callable[[dict], None] | None,
    checkpoints: TrainingCheckpoints | None,
    monitor: TrainingMonitor | None,
) -> tuple[_Run, MethodInputs]:
    """Device, process group, optimizer, schedules' lengths and the resumed state."""
    device = distributed.training_device(resolve_device(config.device))
    distributed.ensure_process_group(device)
    main = distributed.is_main_process()
    plan = BatchPlan(
        config.batch_size,
        distributed.world_size(),
        distributed.rank(),
        config.accumulation_steps,
    )
    _check_can_train(config, images.shape[0], device)
    keep_freed_memory()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    method.to(device)
    if isinstance(images, torch.Tensor):
        images = images.to(device)
    optimizer = build_optimizer(method, config)
    steps_per_epoch = plan.steps_per_epoch(images.shape[0])
    total_steps = steps_per_epoch * config.epochs
    history, step, elapsed_before = _resume_or_start(
        method, optimizer, config, checkpoints, monitor, on_step, main
    )
    model, ddp = _wrapped(method, config, device)
    inputs = MethodInputs(
        images, method.input_sampler(), config.crop_scale, config.horizontal_flip_p
    )
    method.train()
    run = _Run(
        method=method,
        model=model,
        ddp=ddp,
        optimizer=optimizer,
        config=config,
        plan=plan,
        device=device,
        use_bf16=trains_in_bf16(config.precision, device),
        main=main,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        history=history,
        step=step,
        start=time.perf_counter() - elapsed_before,
        monitor=monitor,
        checkpoints=checkpoints,
        on_step=on_step,
        progress=_progress_bar(total_steps, step, description, main),
        description=description,
    )
    return run, inputs


def _set_schedules(run: _Run) -> tuple[float, float]:
    """This step's learning rate and weight decay, set on the optimizer."""
    config = run.config
    lr = warmup_cosine_schedule(
        config.start_lr, config.lr, config.final_lr, run.warmup_steps, run.step, run.total_steps
    )
    weight_decay = cosine_schedule(*config.weight_decay, run.step, run.total_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
        if group["apply_weight_decay"]:
            group["weight_decay"] = weight_decay
    return lr, weight_decay


def _forward_backward(run: _Run, micro_batches: Iterator[dict[str, torch.Tensor]]) -> float:
    """The step's gradient summed over its micro-batches; returns the loss averaged
    over processes."""
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=run.device)
    accumulation = run.plan.accumulation_steps
    for micro in range(accumulation):
        batch = {k: v.to(run.device, non_blocking=True) for k, v in next(micro_batches).items()}
        last = micro == accumulation - 1
        # Gradients are averaged over processes once, after the last micro-batch.
        with nullcontext() if last or run.ddp is None else run.ddp.no_sync():
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
                loss = run.model(batch) / accumulation
            loss.backward()
        loss_sum += loss.detach()
    return distributed.mean_over_ranks(loss_sum).item()


def _monitors(run: _Run, epoch: int) -> dict[str, float]:
    """The monitors due after this step, computed in the training precision (in bf16
    they cost a third)."""
    logged: dict[str, float] = {}
    if run.monitor is None:
        return logged
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        if run.monitor.due_at_step(run.step):
            logged.update(run.monitor.representation(run.method, run.step))
        epoch_ends = run.step + 1 == (epoch + 1) * run.steps_per_epoch
        if epoch_ends and run.monitor.due_at_epoch_end(epoch):
            logged.update(run.monitor.knn_accuracy(run.method))
    return logged


def _record(run: _Run, row: dict) -> None:
    """History, live log, checkpoint and progress bar after a step."""
    run.history.append(row)
    if run.on_step is not None and run.main:
        run.on_step(row)
    run.step += 1
    if run.checkpoints is not None and run.main and run.checkpoints.due(run.step, run.total_steps):
        run.checkpoints.save(
            {
                "step": run.step,
                "epoch": row["epoch"],
                "method": run.method.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "history": run.history,
            }
        )
    run.shown.update({k: v for k, v in row.items() if k in _PROGRESS_METRICS})
    run.progress.update(1)
    run.progress.set_postfix(
        epoch=f"{row['epoch'] + 1}/{run.config.epochs}",
        loss=f"{row['loss']:.4f}",
        img_s=f"{run.step * run.config.batch_size / row['elapsed_s']:.0f}",
        **{_PROGRESS_METRICS[k]: f"{v:.3g}" for k, v in run.shown.items()},
    )


def _train_step(run: _Run, epoch: int, micro_batches: Iterator[dict[str, torch.Tensor]]) -> None:
    lr, weight_decay = _set_schedules(run)
    _seed_stochastic_layers(run.seed, run.step)
    loss_value = _forward_backward(run, micro_batches)
    if not math.isfinite(loss_value):
        run.progress.close()
        raise NonFiniteLossError(
            f"{run.description}: loss is {loss_value} at step {run.step} (epoch {epoch}, "
            f"lr {lr:.3g}); lower training.lr or set training.grad_clip"
        )
    if run.config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.method.parameters(), run.config.grad_clip)
    run.optimizer.step()
    logged = run.method.after_optimizer_step(run.step, run.total_steps)
    elapsed = time.perf_counter() - run.start
    logged.update(_monitors(run, epoch))
    row = {
        "step": run.step,
        "epoch": epoch,
        "loss": loss_value,
        "lr": lr,
        "weight_decay": weight_decay,
        **logged,
        "images_seen": (run.step + 1) * run.config.batch_size,
        "elapsed_s": elapsed,
    }
    _record(run, row)


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
    run, inputs = _start_run(
        method, images, config, seed, description, on_step, checkpoints, monitor
    )
    # One loader for the whole run: its workers start once, not every epoch.
    micro_batches = method_inputs(
        inputs,
        run.plan.remaining_micro_batches(images.shape[0], seed, run.step, config.epochs),
        resolve_loader_workers(config.loader_workers, run.device),
        pin_memory=run.device.type == "cuda",
    )
    for epoch in range(run.step // run.steps_per_epoch, config.epochs):
        while run.step < (epoch + 1) * run.steps_per_epoch:
            _train_step(run, epoch, micro_batches)
        if on_epoch_end is not None and run.main:
            on_epoch_end(epoch, method)
            method.train()
    run.progress.close()
    method.eval()
    if run.main:
        elapsed = run.history[-1]["elapsed_s"]
        logger.info(
            "%s: %d steps in %.1f s (%.0f images/s) on %d x %s, final loss %.4f",
            description,
            run.total_steps,
            elapsed,
            run.total_steps * config.batch_size / elapsed,
            run.plan.world_size,
            run.device,
            run.history[-1]["loss"],
        )
    return pd.DataFrame(run.history)
