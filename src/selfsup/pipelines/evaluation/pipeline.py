from kedro.pipeline import Pipeline, node

from selfsup.pipelines import BASELINES, PRETRAINED
from selfsup.pipelines.evaluation.nodes import evaluate


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
    return sum(per_feature_set, Pipeline([]))
