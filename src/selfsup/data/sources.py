"""Image sources, looked up by name from `ingestion.source`.

A source is a function `(options, image_size) -> ImageSet`; `image_size` is the model's
input size, for sources that resize while decoding. Adding a source means adding a
function registered with `selfsup.data.source_registry.register_source`, not changing
the pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, model_validator
from sklearn.datasets import load_digits as sklearn_digits

# Imported for their readers, which register themselves in SOURCES.
from selfsup.data import array_sources, image_folder  # noqa: F401
from selfsup.data.image_set import ImageSet
from selfsup.data.source_registry import SOURCE_OPTIONS, SOURCES, register_source
from selfsup.params import StrictModel


class NoOptions(StrictModel):
    """`ingestion.options` of a source that takes none (`digits`)."""


def source_options(name: str, options: dict | BaseModel, prefix: str = "") -> BaseModel:
    """`options` validated by the option model of source `name` (SOURCE_OPTIONS), once;
    the error names the key, `ingestion.<prefix>options.<field>`."""
    check_source_name(name, f"{prefix}source")
    model = SOURCE_OPTIONS[name]
    if isinstance(options, model):
        return options
    if isinstance(options, BaseModel):
        options = options.model_dump()
    key = f"ingestion.{prefix}options"
    if model is NoOptions and options:
        raise ValueError(f"the {name} source takes no {key}, got {options}")
    try:
        return model(**(options or {}))
    except ValidationError as error:
        problems = "; ".join(
            f"{key}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"the {name} source: {problems}") from None


def validated_source(data: Any, prefix: str) -> Any:
    """A source block's `source` and `options`, the options as their source's model."""
    if not isinstance(data, dict):
        return data
    name = data.get("source", "digits")
    return {**data, "options": source_options(name, data.get("options") or {}, prefix)}


class SplitConfig(StrictModel):
    """Fractions of the labelled set held out for validation and test (stratified)."""

    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _leave_a_train_split(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(
                f"split.val + split.test = {self.val + self.test} must be below 1 "
                "so that a train split remains"
            )
        return self


class EvalSourceConfig(StrictModel):
    """A second, labelled source whose images the probes are trained and scored on."""

    source: str
    options: SerializeAsAny[BaseModel] = Field(default_factory=NoOptions)

    @model_validator(mode="before")
    @classmethod
    def _source_and_its_options(cls, data: Any) -> Any:
        return validated_source(data, "eval_source.")


class IngestionConfig(StrictModel):
    """Where images come from. `source` is looked up in `selfsup.data.sources.SOURCES`.

    Without `eval_source`, a labelled source is split into train (pretrained on and
    probed), val and test; an unlabelled one can only be pretrained on. With
    `eval_source`, every image of `source` (labelled or not) is pretrained on and
    `eval_source` is split for the probes."""

    source: str = "digits"
    options: SerializeAsAny[BaseModel] = Field(default_factory=NoOptions)
    eval_source: EvalSourceConfig | None = None
    split: SplitConfig = SplitConfig()
    # More rejected files than this fraction of all files is an error, not a warning.
    max_rejected_fraction: float = Field(0.01, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _source_and_its_options(cls, data: Any) -> Any:
        return validated_source(data, "")


@register_source("digits", NoOptions)
def load_digits(options: NoOptions | None = None, image_size: int | None = None) -> ImageSet:
    """scikit-learn's handwritten digits: 1,797 grayscale 8x8 images, 10 classes.

    Shipped inside scikit-learn, so the default run needs no download. Pixel values
    0..16 are scaled to 0..255.
    """
    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSet(
        images=images,
        labels=digits.target.astype(np.int64),
        class_names=[str(name) for name in digits.target_names],
        paths=[f"digits[{i}]" for i in range(len(digits.target))],
    )


__all__ = ["SOURCES", "SOURCE_OPTIONS", "ImageSet", "load_digits", "load_source"]


def check_source_name(name: str, key: str = "source") -> str:
    """`name` must be a reader in SOURCES; the error names the key `ingestion.<key>`."""
    if name not in SOURCES:
        raise ValueError(
            f"unknown source {name!r} in ingestion.{key}; choose one of {sorted(SOURCES)}"
        )
    return name


def load_source(
    name: str, options: dict | BaseModel, image_size: int = 32, key: str = "source"
) -> ImageSet:
    prefix = key.removesuffix("source")
    config = source_options(name, options, prefix)
    try:
        return SOURCES[name](config, image_size)
    except (ValueError, OSError) as error:
        # Readers name their options `ingestion.options`; when they read the evaluation
        # source, the message must name the key the user has to edit instead.
        options_key = f"ingestion.{prefix}options"
        message = str(error)
        if options_key == "ingestion.options" or "ingestion.options" not in message:
            raise
        try:
            renamed = type(error)(message.replace("ingestion.options", options_key))
        except TypeError:  # an exception type that takes other arguments than a message
            raise error from None
        raise renamed from error
