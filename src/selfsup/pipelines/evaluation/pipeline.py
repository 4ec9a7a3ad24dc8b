from kedro.pipeline import Pipeline, node

from selfsup.pipelines import BASELINES, PRETRAINED
from selfsup.pipelines.evaluation.nodes import collect_metrics, compare_methods, evaluate


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
    return sum(per_feature_set, report)
