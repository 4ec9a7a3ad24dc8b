from kedro.pipeline import Pipeline, node

from selfsup.pipelines.masking.nodes import (
    compute_normalization,
    describe_patch_grid,
    mask_preview,
    mask_statistics,
    prepare_model_input,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                prepare_model_input,
                ["images", "params:masking"],
                "model_input_images",
                name="resize_images",
            ),
            node(
                compute_normalization,
                ["model_input_images", "samples"],
                "normalization",
                name="compute_normalization",
            ),
            node(
                describe_patch_grid,
                ["model_input_images", "params:masking"],
                "patch_grid",
                name="describe_patch_grid",
            ),
            node(
                mask_statistics,
                ["params:masking", "params:seed"],
                "mask_stats",
                name="measure_mask_statistics",
            ),
            node(
                mask_preview,
                ["model_input_images", "params:masking", "params:seed"],
                "mask_preview",
                name="plot_mask_preview",
            ),
        ]
    )
