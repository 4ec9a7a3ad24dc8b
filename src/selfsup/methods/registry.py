"""Pretraining methods by name: a leaf module each method registers itself in (the
`register_method` decorator), so that looking a method up imports nothing else."""

from __future__ import annotations

from typing import TypeVar

MethodClass = TypeVar("MethodClass", bound=type)

METHODS: dict[str, type] = {}


def register_method(method_cls: MethodClass) -> MethodClass:
    """Make `method_cls` selectable as `method: <method_cls.name>` in the parameters.

    Usable as a class decorator; a name already taken by another class is an error.
    """
    existing = METHODS.get(method_cls.name)
    if existing is not None and existing is not method_cls:
        raise ValueError(f"method name {method_cls.name!r} is already taken by {existing}")
    METHODS[method_cls.name] = method_cls
    return method_cls
