"""The project hooks driven by hand, without a Kedro run."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node

from selfsup import distributed
from selfsup.datasets import NumpyDataset
from selfsup.evaluation import NoLabelledImagesError
from selfsup.hooks import DistributedHooks, DistributedRunError, MissingInputsError, ReportHooks
from selfsup.pipelines.evaluation.pipeline import create_pipeline as evaluation_pipeline
from selfsup.pipelines.pretraining.pipeline import create_pipeline as pretraining_pipeline


def params(**values) -> DataCatalog:
    return DataCatalog({f"params:{name}": MemoryDataset(value) for name, value in values.items()})


def test_a_partial_run_without_its_inputs_names_the_pipelines_that_write_them(tmp_path):
    catalog = DataCatalog(
        {
            "samples": MemoryDataset(pd.DataFrame({"label": [0]})),
            **{
                f"{name}.features": NumpyDataset(str(tmp_path / f"{name}.npy"))
                for name in ("ijepa", "mae", "simclr", "raw_pixels", "random_init")
            },
        }
    )
    with pytest.raises(MissingInputsError) as missing:
        ReportHooks().before_pipeline_run({}, evaluation_pipeline(), catalog)
    message = str(missing.value)
    assert "ijepa.features" in message and "random_init.features" in message
    assert "kedro run --pipelines features" in message


def test_a_read_out_the_encoder_cannot_give_is_refused_before_the_run():
    catalog = params(features={"pooling": "last4"}, encoder={"depth": 2}, masking={}, evaluation={})
    reads = node(lambda f: f, "params:features", "out", name="read")
    with pytest.raises(ValueError, match="pooling='last4' needs 4 blocks"):
        ReportHooks().before_pipeline_run({}, Pipeline([reads]), catalog)


def test_unlabelled_samples_stop_a_run_that_probes_right_after_ingestion():
    hooks = ReportHooks()
    probe = node(lambda s, f: s, ["samples", "model_input_images"], "ijepa.features", name="x")
    hooks.before_pipeline_run({}, Pipeline([probe]), params(evaluation={}))
    check = node(lambda s: s, "ingested_samples", "samples", name="check_rejected_files")
    unlabelled = pd.DataFrame({"label": [-1, -1], "split": ["pretrain", "pretrain"]})
    with pytest.raises(NoLabelledImagesError, match="eval_source"):
        hooks.after_node_run(check, params(evaluation={}), {"samples": unlabelled})


def test_under_torchrun_only_pretraining_runs_and_only_rank_0_writes(monkeypatch):
    monkeypatch.setattr(distributed, "launched_with_torchrun", lambda: True)
    hooks, catalog = DistributedHooks(), DataCatalog()
    with pytest.raises(DistributedRunError, match="run the pretraining pipeline alone"):
        hooks.before_pipeline_run({}, evaluation_pipeline(), catalog)

    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    pretraining = pretraining_pipeline()
    hooks.before_pipeline_run({}, pretraining, catalog)
    assert pretraining.all_outputs() <= set(catalog.keys())
    assert all(isinstance(catalog.get(name), MemoryDataset) for name in pretraining.all_outputs())
