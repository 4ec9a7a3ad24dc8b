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
        path = self.directory / f"{PREFIX}{state['step']:08d}.pt"
        atomic_write(path, lambda tmp: torch.save({**state, "identity": self.identity}, tmp))
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        for path in self.paths():
            path.unlink()

    def load_latest(self) -> dict | None:
        """The newest checkpoint's state, or None when there is none."""
        path = self.latest()
        if path is None:
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("identity") != self.identity:
            saved = state.get("identity") or {}
            differing = sorted(
                key
                for key in set(saved) | set(self.identity)
                if saved.get(key) != self.identity.get(key)
            )
            raise CheckpointMismatchError(
                f"{path} was written by a run with different {', '.join(differing)}; "
                "set training.resume: false to start over (its checkpoints are then "
                f"replaced), or delete {self.directory}"
            )
        logger.info("resuming from %s (step %d)", path, state["step"])
        return state
