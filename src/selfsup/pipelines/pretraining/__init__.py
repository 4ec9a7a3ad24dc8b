"""The pretraining pipeline."""

from selfsup.pipelines.pretraining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
