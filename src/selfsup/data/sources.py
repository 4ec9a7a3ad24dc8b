"""Image sources, looked up by name from `ingestion.source`.

A source is a function `(options, image_size) -> ImageSet`; `image_size` is the model's
input size, for sources that resize while decoding. Adding a source means adding a
function to `SOURCES`, not changing the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from selfsup.data.array_sources import load_arrays, load_cifar
from selfsup.data.image_folder import load_image_folder
from selfsup.data.image_set import ImageSet


def load_digits(options: dict, image_size: int | None = None) -> ImageSet:
    """scikit-learn's handwritten digits: 1,797 grayscale 8x8 images, 10 classes.

    Shipped inside scikit-learn, so the default run needs no download. Pixel values
    0..16 are scaled to 0..255.
    """
    if options:
        raise ValueError(f"the digits source takes no ingestion.options, got {options}")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSet(
        images=images,
        labels=digits.target.astype(np.int64),
        class_names=[str(name) for name in digits.target_names],
        paths=[f"digits[{i}]" for i in range(len(digits.target))],
    )


SOURCES: dict[str, Callable[[dict, int], ImageSet]] = {
    "digits": load_digits,
    "image_folder": load_image_folder,
    "arrays": load_arrays,
    "cifar": load_cifar,
}

__all__ = ["SOURCES", "ImageSet", "load_digits", "load_source"]


def load_source(name: str, options: dict, image_size: int = 32, key: str = "source") -> ImageSet:
    if name not in SOURCES:
        raise ValueError(
            f"unknown source {name!r} in ingestion.{key}; choose one of {sorted(SOURCES)}"
        )
    try:
        return SOURCES[name](options, image_size)
    except (ValueError, OSError) as error:
        # Readers name their options `ingestion.options`; when they read the evaluation
        # source, the message must name the key the user has to edit instead.
        options_key = "ingestion." + key.removesuffix("source") + "options"
        message = str(error)
        if options_key == "ingestion.options" or "ingestion.options" not in message:
            raise
        try:
            renamed = type(error)(message.replace("ingestion.options", options_key))
        except TypeError:  # an exception type that takes other arguments than a message
            raise error from None
        raise renamed from error
