"""LineageHooks driven by hand, as Kedro's runner drives them: records written after a
node's last save, removed before a file is replaced, and a node whose inputs disagree
stopped before it runs."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node

from selfsup import lineage
from selfsup.datasets import NumpyDataset
from selfsup.hooks import LineageHooks


def identity(x):
    return x


def pair(x):
    return x, x + 1


@pytest.fixture
def project(tmp_path):
    catalog = DataCatalog(
        {
            "left": NumpyDataset(str(tmp_path / "left.npy")),
            "right": NumpyDataset(str(tmp_path / "right.npy")),
            "held": MemoryDataset(),
            "report": NumpyDataset(
                str(tmp_path / "report.npy"), metadata={"kedro-viz": {"layer": "reporting"}}
            ),
        }
    )
    return tmp_path, catalog


def run_node(hooks: LineageHooks, catalog: DataCatalog, step, outputs: dict) -> None:
    """What the runner does around one node: the check, then each output's save."""
    hooks.before_node_run(step, catalog, {})
    for name, data in outputs.items():
        hooks.before_dataset_saved(name, data, step)
        catalog.save(name, data)
        hooks.after_dataset_saved(name, data, step)


def written_once(catalog: DataCatalog):
    """Hooks after one run of a node `write` that saved `left` and `right`."""
    hooks = LineageHooks()
    write = node(pair, "params:x", ["left", "right"], name="write")
    hooks.before_pipeline_run({}, Pipeline([write]), catalog)
    run_node(hooks, catalog, write, {"left": np.zeros(3), "right": np.ones(3)})
    return hooks, write


def test_outputs_get_records_of_the_node_run_and_reports_none(project):
    tmp_path, catalog = project
    hooks, write = written_once(catalog)
    left, right = (
        lineage.read_record(tmp_path / "left.npy"),
        lineage.read_record(tmp_path / "right.npy"),
    )
    assert left == right and set(left) == {"write"}

    report = node(identity, "left", "report", name="report")
    run_node(hooks, catalog, report, {"report": np.zeros(1)})
    assert not lineage.record_path(tmp_path / "report.npy").exists()


def test_a_record_is_written_only_after_the_nodes_last_save(project):
    tmp_path, catalog = project
    hooks, write = written_once(catalog)
    # A second run of the node replaces `left`, then dies before saving `right`.
    hooks.before_node_run(write, catalog, {})
    hooks.before_dataset_saved("left", np.full(3, 7.0), write)
    catalog.save("left", np.full(3, 7.0))
    hooks.after_dataset_saved("left", np.full(3, 7.0), write)
    assert lineage.read_record(tmp_path / "left.npy") is None
    assert lineage.read_record(tmp_path / "right.npy") is not None

    read = node(lambda a, b: a, ["left", "right"], "held", name="read")
    with pytest.raises(lineage.MixedLineageError, match="left.npy has no lineage record"):
        hooks.before_pipeline_run({}, Pipeline([read]), catalog)


def test_inputs_of_two_runs_stop_the_node_before_it_runs(project):
    tmp_path, catalog = project
    hooks, write = written_once(catalog)
    kept = (
        (tmp_path / "right.npy").read_bytes(),
        lineage.record_path(tmp_path / "right.npy").read_text(),
    )
    run_node(hooks, catalog, write, {"left": np.full(3, 5.0), "right": np.full(3, 6.0)})
    (tmp_path / "right.npy").write_bytes(kept[0])
    lineage.record_path(tmp_path / "right.npy").write_text(kept[1])

    read = node(lambda a, b: a, ["left", "right"], "held", name="read")
    with pytest.raises(lineage.MixedLineageError, match="different runs of the node write"):
        hooks.before_node_run(read, catalog, {})


def test_data_passed_in_memory_carries_its_lineage_to_the_next_node(project):
    tmp_path, catalog = project
    hooks = LineageHooks()
    first = node(identity, "params:x", "held", name="first")
    second = node(identity, "held", "left", name="second")
    hooks.before_pipeline_run({}, Pipeline([first, second]), catalog)
    run_node(hooks, catalog, first, {"held": np.zeros(2)})
    run_node(hooks, catalog, second, {"left": np.zeros(2)})
    assert list(lineage.read_record(tmp_path / "left.npy")) == ["first", "second"]
