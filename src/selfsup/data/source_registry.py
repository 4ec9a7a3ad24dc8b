"""Image sources by name: a leaf module each reader registers itself in, with the model
of its `ingestion.options` (the `register_source` decorator)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Reader = TypeVar("Reader", bound=Callable[..., Any])

# name -> reader `(options, image_size) -> ImageSet`, and name -> its options model.
SOURCES: dict[str, Callable[..., Any]] = {}
SOURCE_OPTIONS: dict[str, type] = {}


def register_source(name: str, options: type) -> Callable[[Reader], Reader]:
    """Make a reader selectable as `ingestion.source: <name>`, its options validated by
    `options` when the parameters are read. A name already taken is an error."""

    def register(reader: Reader) -> Reader:
        existing = SOURCES.get(name)
        if existing is not None and existing is not reader:
            raise ValueError(f"source name {name!r} is already taken by {existing}")
        SOURCES[name], SOURCE_OPTIONS[name] = reader, options
        return reader

    return register
