"""Lineage records: fingerprints, ids and the check that a node's inputs share one run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from selfsup import lineage
from selfsup.lineage import MixedLineageError, merge_lineages


def test_file_fingerprint_follows_content_not_name_or_time(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"x" * 1000)
    second.write_bytes(b"x" * 1000)
    assert lineage.file_fingerprint(first) == lineage.file_fingerprint(second)
    second.write_bytes(b"x" * 999 + b"y")
    assert lineage.file_fingerprint(first) != lineage.file_fingerprint(second)


def test_a_folder_is_fingerprinted_by_its_file_names_and_contents(tmp_path):
    """Folder outputs (the timm export) get records like files do."""
    folder = tmp_path / "timm"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights").write_bytes(b"w" * 100)
    before = lineage.file_fingerprint(folder)
    (folder / "sub" / "weights").write_bytes(b"w" * 99 + b"v")
    changed = lineage.file_fingerprint(folder)
    assert changed != before
    (folder / "sub" / "weights").rename(folder / "sub" / "renamed")
    assert lineage.file_fingerprint(folder) != changed


def test_large_files_are_fingerprinted_from_blocks_spread_over_them(tmp_path):
    """Above 64 blocks of 64 KiB only sampled blocks are read: a change inside one of
    them (here the first and the last byte) changes the fingerprint."""
    size = 200 * (1 << 16)
    path = tmp_path / "big.npy"
    path.write_bytes(bytes(size))
    base = lineage.file_fingerprint(path)
    for offset in (0, size - 1):
        data = bytearray(size)
        data[offset] = 1
        path.write_bytes(bytes(data))
        assert lineage.file_fingerprint(path) != base


def test_execution_id_depends_on_inputs_and_written_bytes_only():
    same = lineage.execution_id("resize_images", {"ingest_images": "a"}, ["f1"])
    assert same == lineage.execution_id("resize_images", {"ingest_images": "a"}, ["f1"])
    assert same != lineage.execution_id("resize_images", {"ingest_images": "b"}, ["f1"])
    assert same != lineage.execution_id("resize_images", {"ingest_images": "a"}, ["f2"])
    assert same != lineage.execution_id("other", {"ingest_images": "a"}, ["f1"])


def test_records_round_trip_and_a_missing_or_broken_one_reads_as_none(tmp_path):
    data = tmp_path / "samples.csv"
    data.write_text("a\n1\n")
    assert lineage.read_record(data) is None
    lineage.write_record(data, {"ingest_images": "a1", "check_rejected_files": "b2"})
    assert lineage.record_path(data) == tmp_path / "samples.csv.lineage.json"
    assert lineage.read_record(data) == {"ingest_images": "a1", "check_rejected_files": "b2"}
    lineage.record_path(data).write_text("{not json")
    assert lineage.read_record(data) is None
    lineage.remove_record(data)
    lineage.remove_record(data)  # absent: nothing to do
    assert not lineage.record_path(data).exists()


def test_inputs_of_one_run_merge_into_one_ancestry():
    merged = merge_lineages(
        {
            "model_input.npy": {"ingest_images": "a", "resize_images": "r"},
            "samples.csv": {"ingest_images": "a", "check_rejected_files": "c"},
        }
    )
    assert merged == {"ingest_images": "a", "resize_images": "r", "check_rejected_files": "c"}


def test_inputs_of_two_runs_are_refused_naming_both_files_the_node_and_the_fix():
    with pytest.raises(MixedLineageError) as refused:
        merge_lineages(
            {
                "data/05_model_input/images.npy": {"ingest_images": "new", "resize_images": "r"},
                "data/02_intermediate/samples.csv": {"ingest_images": "old"},
            }
        )
    message = str(refused.value)
    assert "data/05_model_input/images.npy and data/02_intermediate/samples.csv" in message
    assert "different runs of the node ingest_images" in message
    assert "kedro run --from-nodes ingest_images" in message


def test_the_earliest_node_of_a_conflict_is_the_one_to_rerun_from():
    """Records keep the order the nodes ran; a conflict on a node and on the nodes after
    it names the first one, whose inputs are on disk."""
    with pytest.raises(MixedLineageError, match="--from-nodes ingest_images"):
        merge_lineages(
            {
                "images.npy": {"ingest_images": "new", "check_rejected_files": "new"},
                "samples.csv": {"ingest_images": "old", "check_rejected_files": "old"},
            }
        )


def test_a_node_that_cannot_restart_alone_sends_the_fix_one_node_back():
    """check_rejected_files reads ingest_images' results from memory, so the run must
    start at ingest_images even when only check_rejected_files' outputs differ."""
    inputs = {
        "images.npy": {"ingest_images": "same", "check_rejected_files": "new"},
        "samples.csv": {"ingest_images": "same", "check_rejected_files": "old"},
    }
    with pytest.raises(MixedLineageError, match="check_rejected_files.*--from-nodes ingest_images"):
        merge_lineages(inputs, restartable=lambda node: node != "check_rejected_files")
    with pytest.raises(MixedLineageError, match="--from-nodes check_rejected_files"):
        merge_lineages(inputs)


def test_data_kept_in_memory_is_fingerprinted_by_content_where_cheap():
    table = pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1]})
    assert lineage.data_fingerprint(table) == lineage.data_fingerprint(table.copy())
    assert lineage.data_fingerprint(table) != lineage.data_fingerprint(table.iloc[::-1])
    assert lineage.data_fingerprint({"a": 0}) != lineage.data_fingerprint({"a": 1})
    images = np.zeros((3, 8, 8, 1), dtype=np.uint8)
    assert lineage.data_fingerprint(images) != lineage.data_fingerprint(images[:2])
