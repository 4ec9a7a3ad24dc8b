"""Training checkpoints that let an interrupted run continue exactly where it stopped.

A checkpoint holds everything the training loop's next step depends on: the method's
modules (context and target encoders, predictor, decoder or head), the optimizer, the
step and epoch (the schedules' position), the history so far and the elapsed time.
There is no random state to save (sample order, masks, crops and views are functions of
seed, epoch, step and image; dropout is reseeded every step) and no gradient scaler
(bf16 autocast needs none). Only rank 0 of a data-parallel run writes them.

Files are written to a temporary name and renamed (a crash never leaves half a file),
the last `keep` are kept, and they are loaded with `torch.load(weights_only=True)`:
they hold only tensors, numbers, strings, lists and dicts, so loading cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PREFIX = "step-"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a hidden temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CheckpointMismatchError(ValueError):
    """The checkpoint to resume from was written by a run with other settings."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint was about to be written with NaN or infinite weights."""


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as {"a.b.c": value}: the keys a user sets."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def identity_differences(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for every setting that differs, in key order."""
    old, new = flatten(saved), flatten(current)
    missing = "(not set)"
    return [
        f"{key}: {json.dumps(old.get(key, missing))} -> {json.dumps(new.get(key, missing))}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def non_finite_tensors(module_state: dict) -> list[str]:
    return [
        name
        for name, tensor in module_state.items()
        if isinstance(tensor, torch.Tensor)
        and tensor.is_floating_point()
        and not bool(torch.isfinite(tensor).all())
    ]


class TrainingCheckpoints:
    """`step-<N>.pt` files in `directory`, one every `every` steps and one at the end.

    `identity` describes the run (method, hyperparameters, data size, seed...): a run
    resumes only from checkpoints with the same identity."""

    def __init__(self, directory: str | Path, every: int | None, keep: int, identity: dict):
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))

    def paths(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob(f"{PREFIX}*.pt") if p.stem[len(PREFIX) :].isdigit()]
        return sorted(found, key=lambda p: int(p.stem[len(PREFIX) :]))

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to save after `step` steps have been completed."""
        return step == total_steps or (self.every is not None and step % self.every == 0)

    def save(self, state: dict) -> Path:
        """Write `state`; refuses weights that are not finite (a run resumed from them
        could only fail), keeping the checkpoints written before."""
        broken = non_finite_tensors(state["method"])
        if broken:
            kept = self.latest()
            raise NonFiniteWeightsError(
                f"after step {state['step']} the weights {', '.join(broken[:3])}"
                f"{' and others' if len(broken) > 3 else ''} hold NaN or infinite values; "
                "no checkpoint was written"
                + (f" (the newest good one is {kept})" if kept else "")
                + "; lower training.lr or set training.grad_clip"
            )
        path = self.directory / f"{PREFIX}{state['step']:08d}.pt"
        atomic_write(path, lambda tmp: torch.save({**state, "identity": self.identity}, tmp))
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        for path in self.paths():
            path.unlink()

    def load_latest(self) -> dict | None:
        """The newest readable checkpoint's state, or None when there is none. A file
        that cannot be read (truncated, corrupt) is skipped with a warning naming it."""
        paths = self.paths()
        if not paths:
            logger.info(
                "training.resume: no checkpoint in %s; training from the start", self.directory
            )
            return None
        for path in reversed(paths):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                logger.warning(
                    "checkpoint %s holds objects other than tensors and plain values; it is "
                    "not loaded (loading it could run code); trying the one before it",
                    path,
                )
                continue
            except Exception as error:  # noqa: BLE001 - any unreadable file is skipped
                first_line = (str(error).strip().splitlines() or [""])[0][:200]
                logger.warning(
                    "cannot read checkpoint %s (%s: %s): truncated or corrupt; trying the "
                    "one before it",
                    path,
                    type(error).__name__,
                    first_line,
                )
                continue
            self._check_identity(path, state)
            logger.info("resuming from %s (step %d)", path, state["step"])
            return state
        logger.warning(
            "training.resume: no readable checkpoint in %s; training from the start",
            self.directory,
        )
        return None

    def _check_identity(self, path: Path, state: dict) -> None:
        saved = state.get("identity") or {}
        if saved == self.identity:
            return
        differences = identity_differences(saved, self.identity)
        raise CheckpointMismatchError(
            f"{path} was written by a run with other settings: {'; '.join(differences)}. "
            "Set training.resume: false to start over (its checkpoints are then "
            f"replaced), or delete {self.directory}"
        )
