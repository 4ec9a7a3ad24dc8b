"""The small interface every pretraining method implements.

The training loop (`selfsup.training.train`) only calls these methods, so a new method
is one module plus its configuration; the loop, optimizer and schedules stay shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from selfsup.masks import MaskingConfig
from selfsup.models import VisionTransformerEncoder
from selfsup.randomness import SampleDraws


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


class InputSampler(Protocol):
    """Draws one batch's masks or views from `draws`; returns the tensors
    `training_loss` takes (the images included, when the method needs them)."""

    def __call__(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]: ...


class PretrainingMethod(nn.Module, ABC):
    """Trainable parts of one self-supervised method.

    Parameters with `requires_grad` are optimized; anything updated otherwise (an EMA
    target encoder) is updated in `after_optimizer_step`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    # The title of the `examples` picture: what its rows show.
    examples_title: ClassVar[str] = "Example images"

    def __init__(self, config: BaseModel, encoder: VisionTransformerEncoder, data: InputSpec):
        """Subclasses build their trainable parts from their validated `config`, the
        freshly initialized shared `encoder` and the input description `data`."""
        super().__init__()
        self.data = data

    @abstractmethod
    def input_sampler(self) -> InputSampler:
        """What turns a batch of images into this method's inputs (masks, views).

        It runs where the batch is read (a DataLoader worker, ahead of the step), so it
        holds no weights and must pickle small."""

    @abstractmethod
    def training_loss(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss, averaged over the batch, for the tensors `input_sampler` made."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # The loss is the forward pass, so DistributedDataParallel, which hooks
        # gradient synchronisation into forward, can wrap the whole method.
        return self.training_loss(inputs)

    def loss_on(self, images: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        """`training_loss` of `images` with the masks or views `draws` gives them."""
        inputs = self.input_sampler()(images, draws)
        return self.training_loss({k: v.to(images.device) for k, v in inputs.items()})

    def examples(self, images: torch.Tensor, draws: SampleDraws) -> dict[str, torch.Tensor]:
        """Pictures of what the method does with `images` (normalized (B, C, H, W)): named
        rows of the same shape, drawn as `<method>/examples.png` after training (in eval
        mode, without gradients). The default shows the images alone."""
        return {"image": images}

    def monitor_metrics(self, images: torch.Tensor) -> dict[str, float]:
        """Method-specific monitors on a held-out batch (in eval mode, no gradients)."""
        return {}

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Hook run after each optimizer step; returns values to log for that step."""
        return {}

    @abstractmethod
    def evaluation_encoder(self) -> VisionTransformerEncoder:
        """The encoder whose frozen features are evaluated."""


def grey_outside(
    images: torch.Tensor, visible: torch.Tensor, patch_size: int, data: InputSpec
) -> torch.Tensor:
    """`images` (B, C, H, W, normalized as `data` says) with every patch whose entry
    in `visible` (B, N, row-major patches) is False painted mid-grey."""
    batch, channels, height, width = images.shape
    grid = visible.reshape(batch, 1, height // patch_size, width // patch_size)
    shown = grid.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    mean = torch.tensor(data.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=images.device).view(1, -1, 1, 1)
    return torch.where(shown.to(images.device), images, (0.5 - mean) / std)
