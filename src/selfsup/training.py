"""The one training loop every method shares."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2
from tqdm.auto import tqdm

from selfsup.checkpoints import TrainingCheckpoints
from selfsup.config import TrainingConfig
from selfsup.data.preprocessing import NormalizedImages
from selfsup.methods.base import PretrainingMethod
from selfsup.schedules import cosine_schedule, warmup_cosine_schedule

logger = logging.getLogger(__name__)


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


def random_resized_crops(
    images: torch.Tensor, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """An independent RandomResizedCrop per image (torchvision's applies one per call)."""
    size = list(images.shape[-2:])
    crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)
    out = torch.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        for i, image in enumerate(images):
            out[i] = crop(image)
    return out


class _IndexedBatches(torch.utils.data.Dataset):
    """`images[indices]` for a tensor of indices: one whole batch per DataLoader item."""

    def __init__(self, images: NormalizedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


def batches(
    images: torch.Tensor | NormalizedImages,
    batch_indices: list[torch.Tensor],
    workers: int,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """The batches for `batch_indices`, in order. A tensor already on the device is
    indexed in place; `NormalizedImages` are read and normalized by `workers`
    DataLoader processes ahead of the step (0: in this process), into pinned memory
    when the step runs on CUDA. The batches are the same whatever the worker count."""
    if isinstance(images, torch.Tensor):
        return (images[indices.to(images.device)] for indices in batch_indices)
    if workers == 0:
        return (images[indices] for indices in batch_indices)
    return iter(
        torch.utils.data.DataLoader(
            _IndexedBatches(images),
            sampler=batch_indices,
            batch_size=None,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=2,
        )
    )


def train(
    method: PretrainingMethod,
    images: torch.Tensor | NormalizedImages,
    config: TrainingConfig,
    seed: int,
    description: str = "pretrain",
    on_epoch_end: Callable[[int, PretrainingMethod], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
    checkpoints: TrainingCheckpoints | None = None,
) -> pd.DataFrame:
    """Pretrain `method` on normalized images (N, C, H, W); returns per-step history.

    `images` is a tensor (moved to the device whole) or `NormalizedImages`, which reads
    each batch from a (memory-mapped) uint8 array, for datasets larger than memory.

    Every random choice (shuffling, masks, crops) derives from `seed`. `on_epoch_end`
    is called with the finished epoch's index and the method (e.g. to probe it);
    `on_step` with each step's history row as it is recorded (e.g. to log it live).

    With `checkpoints`, the full training state is saved every `config.checkpoint_every`
    steps and at the end; with `config.resume`, training continues from the newest
    checkpoint (its history rows are replayed through `on_step` first) and ends with
    the same weights as a run that was never interrupted.
    """
    if images.shape[0] < config.batch_size:
        raise ValueError(
            f"training.batch_size={config.batch_size} exceeds the {images.shape[0]} "
            "training images; lower the batch size"
        )
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    method.to(device)
    if isinstance(images, torch.Tensor):
        images = images.to(device)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")

    groups = parameter_groups(method)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    steps_per_epoch = images.shape[0] // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    mask_rng = np.random.default_rng(seed)

    history: list[dict] = []
    step, elapsed_before, order = 0, 0.0, None
    resumed = checkpoints.load_latest() if checkpoints and config.resume else None
    if resumed is not None:
        method.load_state_dict(resumed["method"])
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        mask_rng.bit_generator.state = resumed["mask_rng"]
        torch.set_rng_state(resumed["torch_rng"])
        if device.type == "cuda" and resumed["cuda_rng"]:
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        history, step, order = resumed["history"], resumed["step"], resumed["order"]
        elapsed_before = history[-1]["elapsed_s"] if history else 0.0
        for row in history:
            if on_step is not None:
                on_step(row)
    elif checkpoints is not None:
        checkpoints.clear()  # from an earlier run: never mix two runs' checkpoints
    method.train()
    # Redraw often on a terminal; in a log file every redraw is a line, so rarely.
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc=description,
        unit="step",
        mininterval=0.5 if sys.stderr.isatty() else 15.0,
    )
    start = time.perf_counter() - elapsed_before
    elapsed = elapsed_before
    first_batch = step % steps_per_epoch
    for epoch in range(step // steps_per_epoch, config.epochs):
        if first_batch == 0:
            order = torch.randperm(images.shape[0], generator=generator)
        batch_indices = [
            order[start : start + config.batch_size]
            for start in range(
                first_batch * config.batch_size,
                steps_per_epoch * config.batch_size,
                config.batch_size,
            )
        ]
        first_batch = 0
        for loaded in batches(images, batch_indices, config.loader_workers, device):
            lr = warmup_cosine_schedule(
                config.start_lr, config.lr, config.final_lr, warmup_steps, step, total_steps
            )
            weight_decay = cosine_schedule(*config.weight_decay, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group["apply_weight_decay"]:
                    group["weight_decay"] = weight_decay

            batch = loaded.to(device, non_blocking=True)
            if config.crop_scale is not None:
                batch = random_resized_crops(batch, config.crop_scale, generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = method.training_loss(batch, mask_rng)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                progress.close()
                raise NonFiniteLossError(
                    f"{description}: loss is {loss_value} at step {step} (epoch {epoch}, "
                    f"lr {lr:.3g}); lower training.lr or set training.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
            optimizer.step()
            logged = method.after_optimizer_step(step, total_steps)

            elapsed = time.perf_counter() - start
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
            if on_step is not None:
                on_step(row)
            step += 1
            if checkpoints is not None and checkpoints.due(step, total_steps):
                checkpoints.save(
                    {
                        "step": step,
                        "epoch": epoch,
                        "method": method.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "order": order,
                        "generator": generator.get_state(),
                        "mask_rng": mask_rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                        "history": history,
                    }
                )
            progress.update(1)
            progress.set_postfix(
                epoch=f"{epoch + 1}/{config.epochs}",
                loss=f"{loss_value:.4f}",
                img_s=f"{step * config.batch_size / elapsed:.0f}",
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, method)
            method.train()
    progress.close()
    method.eval()
    logger.info(
        "%s: %d steps in %.1f s (%.0f images/s) on %s, final loss %.4f",
        description,
        total_steps,
        elapsed,
        total_steps * config.batch_size / elapsed,
        device,
        history[-1]["loss"],
    )
    return pd.DataFrame(history)
