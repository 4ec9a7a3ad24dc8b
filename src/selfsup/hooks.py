"""Project hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class ReportHooks:
    """Logs the evaluation table as the last thing a run prints."""

    @hook_impl
    def after_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if "metrics_table" in pipeline.all_outputs():
            logger.info("\n%s", catalog.load("metrics_table"))
