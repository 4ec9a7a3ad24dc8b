"""The small interface every pretraining method implements.

The training loop (`selfsup.training.train`) only calls these methods, so a new method
is one module plus its configuration; the loop, optimizer and schedules stay shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from selfsup.config import MaskingConfig
from selfsup.models import VisionTransformerEncoder


@dataclass(frozen=True)
class InputSpec:
    """What a method knows about the images it is trained on.

    Images reach `training_loss` normalized per channel with `mean` and `std` (in [0, 1]
    pixel units), so a method that augments in pixel space (SimCLR's colour jitter) can
    undo and redo the normalization.
    """

    channels: int
    masking: MaskingConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_normalization(
        cls, channels: int, masking: MaskingConfig, normalization: dict | None = None
    ) -> InputSpec:
        """`normalization` is the pipeline's {"mean": [...], "std": [...]}; None means
        images are raw [0, 1] pixels."""
        if normalization is None:
            return cls(channels, masking, (0.0,) * channels, (1.0,) * channels)
        return cls(channels, masking, tuple(normalization["mean"]), tuple(normalization["std"]))


class PretrainingMethod(nn.Module, ABC):
    """Trainable parts of one self-supervised method.

    Parameters with `requires_grad` are optimized; anything updated otherwise (an EMA
    target encoder) is updated in `after_optimizer_step`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel, encoder: VisionTransformerEncoder, data: InputSpec):
        """Subclasses build their trainable parts from their validated `config`, the
        freshly initialized shared `encoder` and the input description `data`."""
        super().__init__()

    @abstractmethod
    def training_loss(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Scalar loss for a batch of normalized images (B, C, H, W).

        `rng` drives every random choice the method makes (masks, views), so a run is
        a function of the seed.
        """

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Hook run after each optimizer step; returns values to log for that step."""
        return {}

    @abstractmethod
    def evaluation_encoder(self) -> VisionTransformerEncoder:
        """The encoder whose frozen features are evaluated."""
