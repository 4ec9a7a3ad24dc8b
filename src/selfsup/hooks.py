"""Project hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class MissingInputsError(RuntimeError):
    """A partial run (`--namespaces`, `--pipelines`) needs outputs no run produced yet."""


class ReportHooks:
    """Checks a partial run's inputs up front; logs the comparison table at the end."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        missing = sorted(
            name
            for name in pipeline.inputs()
            if not name.startswith("params:")
            and name != "parameters"
            and name in catalog
            and not catalog.exists(name)
        )
        if not missing:
            return
        from kedro.framework.project import pipelines

        producers = sorted(
            name
            for name, registered in pipelines.items()
            if name != "__default__" and set(missing) & registered.all_outputs()
        )
        raise MissingInputsError(
            f"this run reads {', '.join(missing)}, which no earlier run has written; "
            f"create them with `kedro run --pipelines {','.join(producers)}` "
            "(or run everything with `kedro run`), then repeat this command"
        )

    @hook_impl
    def after_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if "comparison_report" in pipeline.all_outputs():
            logger.info("\n%s", catalog.load("comparison_report"))
