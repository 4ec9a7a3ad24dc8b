"""Pretraining methods, looked up by name: importing this package registers the four
the project ships (each module registers itself in `selfsup.methods.registry`)."""

from __future__ import annotations

from selfsup.masks import MaskingConfig
from selfsup.methods.base import InputSpec, PretrainingMethod
from selfsup.methods.ijepa import IJEPA
from selfsup.methods.lejepa import LeJEPA
from selfsup.methods.mae import MAE
from selfsup.methods.registry import METHODS, register_method
from selfsup.methods.simclr import SimCLR
from selfsup.models import build_encoder
from selfsup.models.vit import EncoderConfig


def build_method(
    name: str,
    method_params: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    in_chans: int,
    normalization: dict | None = None,
) -> PretrainingMethod:
    """Instantiate method `name`; its parameters are validated by its config class.

    `normalization` ({"mean", "std"} per channel) describes how the training images
    were normalized; None means raw [0, 1] pixels.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    method_cls = METHODS[name]
    config = method_cls.config_class.model_validate(method_params)
    backbone = build_encoder(encoder, masking.image_size, masking.patch_size, in_chans)
    data = InputSpec.from_normalization(in_chans, masking, normalization)
    return method_cls(config, backbone, data)


__all__ = [
    "IJEPA",
    "MAE",
    "LeJEPA",
    "METHODS",
    "InputSpec",
    "PretrainingMethod",
    "SimCLR",
    "build_method",
    "register_method",
]
