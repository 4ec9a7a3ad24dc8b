"""What every image source returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNLABELLED = -1


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, H, W, C), in memory or memory-mapped; int64 labels (N,), with
    UNLABELLED (-1) for every image of an unlabelled set; one name per class index.

    `paths` says where each image came from; `rejected` lists files a source skipped
    (`path`, `reason`) and `ignored` the hidden files it did not consider."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str] | None = None
    rejected: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images"
            )
        if self.paths is not None and len(self.paths) != self.images.shape[0]:
            raise ValueError(f"{len(self.paths)} paths for {self.images.shape[0]} images")

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    @property
    def rejected_fraction(self) -> float:
        total = self.images.shape[0] + len(self.rejected)
        return len(self.rejected) / total if total else 0.0
