from kedro.pipeline import Pipeline, node

from selfsup.pipelines.ingestion.nodes import ingest_images, report_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                ingest_images,
                ["params:ingestion", "params:seed"],
                ["images", "samples"],
                name="ingest_images",
            ),
            node(report_dataset, ["images", "samples"], "dataset_report", name="report_dataset"),
        ]
    )
