from kedro.pipeline import Pipeline, node

from selfsup.pipelines import PRETRAINED
from selfsup.pipelines.features.nodes import (
    pretrained_features,
    random_init_features,
    raw_pixel_features,
)

SHARED_INPUTS = {"model_input_images", "samples", "normalization"}


def _namespaced(namespace: str, nodes: list, parameters: set[str]) -> Pipeline:
    return Pipeline(nodes, namespace=namespace, inputs=SHARED_INPUTS, parameters=parameters)


def create_pipeline(**kwargs) -> Pipeline:
    per_method = [
        _namespaced(
            name,
            [
                node(
                    pretrained_features,
                    [
                        "encoder",
                        "model_input_images",
                        "samples",
                        "normalization",
                        "params:features",
                    ],
                    "features",
                    name="extract_features",
                )
            ],
            {"params:features"},
        )
        for name in PRETRAINED
    ]
    baselines = [
        _namespaced(
            "raw_pixels",
            [
                node(
                    raw_pixel_features,
                    ["model_input_images", "samples", "normalization"],
                    "features",
                    name="extract_features",
                )
            ],
            set(),
        ),
        _namespaced(
            "random_init",
            [
                node(
                    random_init_features,
                    [
                        "model_input_images",
                        "samples",
                        "normalization",
                        "params:encoder",
                        "params:masking",
                        "params:features",
                        "params:seed",
                    ],
                    "features",
                    name="extract_features",
                )
            ],
            {"params:encoder", "params:masking", "params:features", "params:seed"},
        ),
    ]
    return sum(per_method + baselines, Pipeline([]))
