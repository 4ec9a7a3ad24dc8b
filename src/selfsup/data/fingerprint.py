"""A short fingerprint of a training set, so that a checkpoint is resumed only on the
data it was trained on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np


def images_fingerprint(
    images: np.ndarray, rows: np.ndarray, names: Sequence[str], sampled: int = 256
) -> str:
    """Hash of the selected rows' shape, their names (file paths) and the pixels of up to
    `sampled` of them spread evenly over the rows. Reading a sample, not every image,
    keeps it cheap on large sets; two different sets of the same size and names differ
    unless the sampled images are identical."""
    selected = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
    digest = hashlib.sha256()
    digest.update(json.dumps([list(images.shape[1:]), str(images.dtype), len(selected)]).encode())
    for name in names:
        digest.update(name.encode("utf-8", "backslashreplace") + b"\0")
    if len(selected):
        picks = np.linspace(0, len(selected) - 1, min(sampled, len(selected))).astype(int)
        for row in selected[picks]:
            digest.update(np.ascontiguousarray(images[row]).tobytes())
    return digest.hexdigest()[:16]
