"""The report pipeline."""

from selfsup.pipelines.report.pipeline import create_pipeline

__all__ = ["create_pipeline"]
