"""Pretraining methods, looked up by name."""

from __future__ import annotations

from selfsup.config import EncoderConfig, MaskingConfig
from selfsup.methods.base import PretrainingMethod
from selfsup.methods.ijepa import IJEPA
from selfsup.methods.mae import MAE
from selfsup.models import build_encoder

METHODS: dict[str, type[PretrainingMethod]] = {method.name: method for method in (IJEPA, MAE)}


def build_method(
    name: str,
    method_params: dict,
    encoder: EncoderConfig,
    masking: MaskingConfig,
    in_chans: int,
) -> PretrainingMethod:
    """Instantiate method `name`; its parameters are validated by its config class."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    method_cls = METHODS[name]
    config = method_cls.config_class.model_validate(method_params)
    backbone = build_encoder(encoder, masking.image_size, masking.patch_size, in_chans)
    return method_cls(config, backbone, masking)


__all__ = ["METHODS", "PretrainingMethod", "build_method"]
