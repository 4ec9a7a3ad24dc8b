"""The small interface every pretraining method implements.

The training loop (`selfsup.training.train`) only calls these methods, so a new method
is one module plus its configuration; the loop, optimizer and schedules stay shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from selfsup.models import VisionTransformerEncoder


class PretrainingMethod(nn.Module, ABC):
    """Trainable parts of one self-supervised method.

    Parameters with `requires_grad` are optimized; anything updated otherwise (an EMA
    target encoder) is updated in `after_optimizer_step`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]

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
