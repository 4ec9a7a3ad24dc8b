"""The masking pipeline."""

from selfsup.pipelines.masking.pipeline import create_pipeline

__all__ = ["create_pipeline"]
