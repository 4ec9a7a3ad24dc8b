"""Which run made each file, so that no node works on files of two different runs.

Every file a node writes and another node reads gets a record beside it,
`<file>.lineage.json`: for each node execution it descends from, that node's name and an
id of that execution (a hash of its parameters, its inputs' records and what it wrote).
Before a node runs, the records of its inputs must agree on every node they share;
otherwise the inputs come from two runs and the node stops, naming both files. A record
is removed before its file is replaced and written after the node ends, so a run that
stops between its saves leaves files without records, which are refused the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pandas as pd

from selfsup.checkpoints import atomic_write

SUFFIX = ".lineage.json"
# Files larger than this are fingerprinted from evenly spaced blocks, not read whole.
_BLOCKS, _BLOCK_BYTES = 64, 1 << 16

Ancestry = dict[str, str]  # node name -> id of the execution of it the data descends from


class MixedLineageError(RuntimeError):
    """A node's inputs were written by different runs, or by a run that stopped midway."""


def record_path(data_file: str | Path) -> Path:
    data_file = Path(data_file)
    return data_file.with_name(data_file.name + SUFFIX)


def file_fingerprint(path: str | Path) -> str:
    """Hash of a file's size and content (of 64 blocks spread over it when it is large),
    or of a folder's file names and their fingerprints; what a node wrote, so that a
    rerun that writes other data gets another id."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [(p.relative_to(path).as_posix(), file_fingerprint(p)) for p in files]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        if size <= _BLOCKS * _BLOCK_BYTES:
            digest.update(handle.read())
        else:
            step = (size - _BLOCK_BYTES) / (_BLOCKS - 1)
            for block in range(_BLOCKS):
                handle.seek(round(block * step))
                digest.update(handle.read(_BLOCK_BYTES))
    return digest.hexdigest()[:16]


def execution_id(node_name: str, inputs: Ancestry, written: Iterable[str]) -> str:
    """Id of one execution of a node: its inputs' lineage and the fingerprints of the
    files it wrote. Content only, not parameters: a rerun that writes the same bytes
    from the same inputs (a report-only setting changed) keeps its id, so the files
    after it stay valid."""
    payload = json.dumps([node_name, sorted(inputs.items()), sorted(written)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_record(data_file: str | Path) -> Ancestry | None:
    """The record beside `data_file`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads(record_path(data_file).read_text())
    except (OSError, ValueError):
        return None
    ancestry = record.get("ancestry") if isinstance(record, dict) else None
    if not isinstance(ancestry, dict):
        return None
    return {str(node): str(run) for node, run in ancestry.items()}


def write_record(data_file: str | Path, ancestry: Ancestry) -> None:
    # In the order the nodes ran: the first node of a conflict is the one to rerun from.
    text = json.dumps({"ancestry": ancestry}, indent=1) + "\n"
    atomic_write(record_path(data_file), lambda tmp: Path(tmp).write_text(text))


def remove_record(data_file: str | Path) -> None:
    record_path(data_file).unlink(missing_ok=True)


def data_fingerprint(data: object) -> str:
    """Fingerprint of an output kept in memory, where it is cheap: a table's or a
    mapping's content, an array's shape and type (its pixels reach the files after it)."""
    if isinstance(data, pd.DataFrame):
        content = pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes()
        content += json.dumps(list(map(str, data.columns))).encode()
    elif isinstance(data, (dict, list, tuple, str, int, float)):
        content = json.dumps(data, sort_keys=True, default=str).encode()
    else:
        content = repr((type(data).__name__, getattr(data, "shape", None))).encode()
        content += str(getattr(data, "dtype", "")).encode()
    return hashlib.sha256(content).hexdigest()[:16]


def merge_lineages(
    inputs: Mapping[str, Ancestry], restartable: Callable[[str], bool] = lambda node: True
) -> Ancestry:
    """One ancestry from the inputs' (label -> ancestry in the order the nodes ran; a
    label names the file), or MixedLineageError naming two inputs that descend from
    different executions of the same node and the command that makes them agree again:
    rerun from the earliest such node, or from the last node before it that
    `restartable` accepts (one whose inputs are all on disk)."""
    merged: Ancestry = {}
    first_seen: dict[str, str] = {}
    conflicts: list[tuple[str, str, str]] = []
    for label, ancestry in inputs.items():
        for node, run in ancestry.items():
            if node not in merged:
                merged[node], first_seen[node] = run, label
            elif merged[node] != run:
                conflicts.append((node, first_seen[node], label))
    if not conflicts:
        return merged
    order = list(merged)
    node, first, second = min(conflicts, key=lambda conflict: order.index(conflict[0]))
    start = order.index(node)
    while start > 0 and not restartable(order[start]):
        start -= 1
    raise MixedLineageError(
        f"{first} and {second} come from different runs of the node {node} (a run stopped "
        "between its saves, or one of them was rewritten alone); using them together "
        "would mix two datasets. Rerun from there: "
        f"`kedro run --from-nodes {order[start]}` (or the whole `kedro run`)"
    )
