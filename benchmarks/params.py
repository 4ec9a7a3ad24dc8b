"""Parameter trees for the benchmark scripts: conf/base read as plain dicts, and a
key-by-key merge of overrides (what Kedro's configuration environments do)."""

from __future__ import annotations

import json


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, nested dicts key by key; `base` is not changed."""
    merged = json.loads(json.dumps(base))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
