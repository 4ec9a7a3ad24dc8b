from kedro.pipeline import Pipeline, node

from selfsup.pipelines import PRETRAINED
from selfsup.pipelines.pretraining.nodes import (
    export_to_timm,
    plot_history,
    pretrain_writing_to,
)

SHARED_INPUTS = {"model_input_images", "samples", "normalization"}
SHARED_PARAMETERS = {"params:encoder", "params:masking", "params:seed"}
# dvclive's folder per method, relative to the project root like the catalog's paths;
# dvc.yaml declares its plots.
TRAINING_LOG_DIR = "data/08_reporting/{namespace}/dvclive"
# Training checkpoints per method (not a catalog dataset: only the training loop reads
# them, to resume an interrupted run).
CHECKPOINT_DIR = "data/06_models/{namespace}/checkpoints"


def method_pipeline(namespace: str) -> Pipeline:
    """The pretraining template under `namespace`; its parameters are `params:<namespace>`."""
    template = Pipeline(
        [
            node(
                pretrain_writing_to(
                    TRAINING_LOG_DIR.format(namespace=namespace),
                    CHECKPOINT_DIR.format(namespace=namespace),
                ),
                [
                    "model_input_images",
                    "samples",
                    "normalization",
                    "params:encoder",
                    "params:masking",
                    "params:pretraining",
                    "params:seed",
                ],
                ["encoder", "training_history", "examples"],
                name="pretrain",
            ),
            node(
                export_to_timm,
                ["encoder", "params:pretraining"],
                "timm_encoder",
                name="export_to_timm",
            ),
            node(
                plot_history,
                ["training_history", "params:pretraining"],
                "loss_curve",
                name="plot_loss_curve",
            ),
        ]
    )
    return Pipeline(
        template,
        namespace=namespace,
        inputs=SHARED_INPUTS,
        parameters={
            **{p: p for p in SHARED_PARAMETERS},
            "params:pretraining": f"params:{namespace}",
        },
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum((method_pipeline(name) for name in PRETRAINED), Pipeline([]))
