from kedro.pipeline import Pipeline, node

from selfsup.pipelines import BASELINES, PRETRAINED
from selfsup.pipelines.evaluation.nodes import evaluate, report_metrics


def create_pipeline(**kwargs) -> Pipeline:
    names = (*PRETRAINED, *BASELINES)
    per_feature_set = [
        Pipeline(
            [
                node(
                    evaluate,
                    ["features", "samples", "params:evaluation", "params:seed"],
                    "metrics",
                    name="evaluate",
                )
            ],
            namespace=name,
            inputs={"samples"},
            outputs={"metrics": f"{name}_metrics"},
            parameters={"params:evaluation", "params:seed"},
        )
        for name in names
    ]
    report = Pipeline(
        [
            node(
                report_metrics,
                {name: f"{name}_metrics" for name in names},
                ["metrics", "metrics_table"],
                name="report_metrics",
            )
        ]
    )
    return sum(per_feature_set, report)
