from kedro.pipeline import Pipeline, node

from selfsup.pipelines import BASELINES, PRETRAINED
from selfsup.pipelines.evaluation.nodes import evaluate, plot_test_map_of


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
                ),
                node(
                    plot_test_map_of(name),
                    ["features", "samples", "params:seed"],
                    "tsne",
                    name="plot_test_tsne",
                ),
            ],
            namespace=name,
            inputs={"samples"},
            outputs={"metrics": f"{name}_metrics"},
            parameters={"params:evaluation", "params:seed"},
        )
        for name in names
    ]
    return sum(per_feature_set, Pipeline([]))
