from kedro.pipeline import Pipeline, node

from selfsup.pipelines import BASELINES, PRETRAINED
from selfsup.pipelines.report.nodes import collect_metrics, compare_methods


def create_pipeline(**kwargs) -> Pipeline:
    names = (*PRETRAINED, *BASELINES)
    return Pipeline(
        [
            node(
                collect_metrics,
                {name: f"{name}_metrics" for name in names},
                "metrics",
                name="collect_metrics",
            ),
            node(
                compare_methods,
                {
                    "metrics": "metrics",
                    **{name: f"{name}.training_history" for name in PRETRAINED},
                },
                ["comparison", "comparison_report", "comparison_chart"],
                name="compare_methods",
            ),
        ]
    )
