from kedro.pipeline import Pipeline, node

from selfsup.pipelines.ingestion.nodes import accept_ingestion, ingest_images, report_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                ingest_images,
                ["params:ingestion", "params:masking", "params:seed"],
                # In memory until the rejected files are checked: a stopped ingestion
                # leaves the previous images, samples and class index whole.
                ["ingested_images", "ingested_samples", "ingested_class_index", "rejected_files"],
                name="ingest_images",
            ),
            node(
                accept_ingestion,
                [
                    "ingested_images",
                    "ingested_samples",
                    "ingested_class_index",
                    "rejected_files",
                    "params:ingestion",
                ],
                ["images", "samples", "class_index"],
                name="check_rejected_files",
            ),
            node(
                report_dataset,
                ["images", "samples", "rejected_files"],
                "dataset_report",
                name="report_dataset",
            ),
        ]
    )
