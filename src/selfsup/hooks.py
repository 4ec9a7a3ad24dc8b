"""Project hooks."""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import time
from pathlib import Path

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset
from kedro.pipeline import Pipeline

from selfsup import distributed, lineage
from selfsup.config import EncoderConfig, EvaluationConfig, FeatureConfig, MaskingConfig
from selfsup.data.splits import evaluated_rows
from selfsup.evaluation import (
    NoLabelledImagesError,
    check_enough_labels,
    check_pooling,
    no_labels_message,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None

logger = logging.getLogger(__name__)


class MissingInputsError(RuntimeError):
    """A partial run (`--namespaces`, `--pipelines`) needs outputs no run produced yet."""


class ConcurrentRunError(RuntimeError):
    """Another `kedro run` is writing this project folder's outputs."""


class DistributedRunError(RuntimeError):
    """A `torchrun` launch asked for more than pretraining."""


def _registered_pipelines() -> dict[str, Pipeline]:
    """Every pipeline of the project by name, whichever ones this run was asked for (in
    a run, Kedro's own registry holds only those); found as Kedro finds them, one
    `selfsup.pipelines.<name>.pipeline.create_pipeline` each."""
    package = importlib.import_module("selfsup.pipelines")
    return {
        module.name: importlib.import_module(
            f"selfsup.pipelines.{module.name}.pipeline"
        ).create_pipeline()
        for module in pkgutil.iter_modules(package.__path__)
        if module.ispkg
    }


# The pretraining template's nodes (every method namespace has all three).
_TRAINING_NODES = {"pretrain", "export_to_timm", "plot_loss_curve"}


class DistributedHooks:
    """Under `torchrun`, every process runs the same `kedro run`: each trains its share
    of every batch, and only rank 0 writes. The run must be pretraining alone, since
    the other pipelines would run once per process."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if not distributed.launched_with_torchrun():
            return
        others = sorted(
            node.name for node in pipeline.nodes if node.name.split(".")[-1] not in _TRAINING_NODES
        )
        if others:
            raise DistributedRunError(
                f"under torchrun, run the pretraining pipeline alone (this run also has "
                f"{', '.join(others[:4])}{' ...' if len(others) > 4 else ''}): first "
                "`kedro run --pipelines ingestion,masking` once, then `torchrun ... "
                "--no-python kedro run --pipelines pretraining`, then `kedro run "
                "--pipelines features,evaluation,report` (README, 'Several GPUs')"
            )
        if not distributed.is_main_process():
            # Rank 0 writes the encoders, histories and plots; the others keep theirs
            # in memory, where their own plotting node still finds them.
            for name in pipeline.all_outputs():
                catalog[name] = MemoryDataset()


def _as_config(catalog, name: str, config_class):
    value = catalog.load(f"params:{name}")
    return value if isinstance(value, config_class) else config_class(**value)


def check_read_out(catalog) -> None:
    """The features' read-out must fit the encoder the run builds: raised before any
    node runs, not after pretraining."""
    features = _as_config(catalog, "features", FeatureConfig)
    encoder = _as_config(catalog, "encoder", EncoderConfig)
    masking = _as_config(catalog, "masking", MaskingConfig)
    grid = masking.image_size // masking.patch_size
    check_pooling(features.pooling, features.grid_cells, encoder.depth, grid)


class ReportHooks:
    """Checks a partial run's inputs and the features' read-out up front, stops a run
    that would probe unlabelled images before it trains, and logs the comparison table
    at the end."""

    def __init__(self) -> None:
        self._probes_in_run = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._probes_in_run = any(
            "samples" in node.inputs and any(out.endswith("features") for out in node.outputs)
            for node in pipeline.nodes
        )
        if any("params:features" in node.inputs for node in pipeline.nodes):
            check_read_out(catalog)
        missing = sorted(
            name
            for name in pipeline.inputs()
            if not name.startswith("params:")
            and name != "parameters"
            and name in catalog
            and not catalog.exists(name)
        )
        if not missing:
            return
        producers = sorted(
            name
            for name, registered in _registered_pipelines().items()
            if set(missing) & registered.all_outputs()
        )
        raise MissingInputsError(
            f"this run reads {', '.join(missing)}, which no earlier run has written; "
            f"create them with `kedro run --pipelines {','.join(producers)}` "
            "(or run everything with `kedro run`), then repeat this command"
        )

    @hook_impl
    def after_node_run(self, node, catalog, outputs: dict) -> None:
        # Right after ingestion, not after hours of pretraining, when the probes would
        # find no labels or too few per class.
        if node.name == "check_rejected_files" and self._probes_in_run:
            samples = outputs["samples"]
            labelled = samples[evaluated_rows(samples)]
            if labelled.empty:
                raise NoLabelledImagesError(no_labels_message())
            evaluation = _as_config(catalog, "evaluation", EvaluationConfig)
            check_enough_labels(
                labelled["label"].to_numpy(), labelled["split"].to_numpy(), evaluation
            )

    @hook_impl
    def after_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if "comparison_report" in pipeline.all_outputs():
            logger.info("\n%s", catalog.load("comparison_report"))


# In the project root (Kedro runs there), outside data/: a refused run writes no data.
RUN_LOCK = ".kedro_run.lock"


class RunLockHooks:
    """One `kedro run` per project folder at a time: a second run would overwrite the
    first one's outputs, checkpoints and logs while it writes them. The lock is an
    advisory lock (flock) on RUN_LOCK, which the OS drops when its process ends, so a
    crashed or killed run leaves nothing stuck. Under torchrun, rank 0 holds it."""

    def __init__(self) -> None:
        self._held = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        # A run stopped by another hook before it started never reached
        # after_pipeline_run: drop its lock (this process's) first.
        self._release()
        if fcntl is None or not distributed.is_main_process():
            return
        path = Path(RUN_LOCK)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConcurrentRunError(
                f"another kedro run is using this project folder ({holder}; lock file "
                f"{path.resolve()}); wait for it to end or stop it, or run from a "
                "separate clone. Two runs in one folder would mix their outputs."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._held = handle

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing drops the flock
            self._held = None

    @hook_impl
    def after_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self, error, run_params: dict, pipeline, catalog) -> None:
        self._release()


def _file_of(catalog, name: str) -> Path | None:
    """The file behind a catalog entry, or None for data kept in memory."""
    dataset = catalog.get(name) if name in catalog else None
    filepath = getattr(dataset, "_filepath", None)
    return None if filepath is None else Path(str(filepath))


def _is_report(catalog, name: str) -> bool:
    """Datasets of kedro-viz's `reporting` layer: read by people and by other reports
    only, so they carry no lineage record."""
    dataset = catalog.get(name) if name in catalog else None
    metadata = getattr(dataset, "metadata", None) or {}
    return (metadata.get("kedro-viz") or {}).get("layer") == "reporting"


class LineageHooks:
    """Keeps a lineage record beside every file one node writes and another reads
    (`selfsup.lineage`), and stops a node whose inputs come from different runs, naming
    the two files, before it does any work. Kedro saves a node's outputs one by one
    after the node returns; the records are written once the last one is saved, from
    the fingerprints of the files written."""

    def __init__(self) -> None:
        self._catalog = None
        self._in_memory: dict[str, lineage.Ancestry] = {}
        self._pending: dict[str, tuple[set[str], lineage.Ancestry, list[str]]] = {}

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._catalog = catalog
        self._in_memory, self._pending = {}, {}
        # The files this run reads but does not write, checked together before any
        # node runs; each node checks its own inputs again when it starts.
        existing = [name for name in sorted(pipeline.inputs()) if self._tracked(name)]
        existing = [name for name in existing if name in catalog and catalog.exists(name)]
        inputs = dict(self._input_lineage(catalog, name) for name in existing)
        lineage.merge_lineages(inputs, self._restartable)

    def _tracked(self, name: str) -> bool:
        return (
            not name.startswith("params:")
            and name != "parameters"
            and not _is_report(self._catalog, name)
        )

    def _rerun_hint(self, names: list[str]) -> str:
        producers = sorted(
            pipeline_name
            for pipeline_name, registered in _registered_pipelines().items()
            if set(names) & registered.all_outputs()
        )
        if not producers:
            return "the whole `kedro run`"
        return (
            f"`kedro run --pipelines {','.join(producers)}` and the pipelines after it "
            "(or the whole `kedro run`)"
        )

    def _input_lineage(self, catalog, name: str) -> tuple[str, lineage.Ancestry]:
        path = _file_of(catalog, name)
        if path is None:
            return name, self._in_memory.get(name, {})
        record = lineage.read_record(path)
        if record is None:
            raise lineage.MixedLineageError(
                f"{path} has no lineage record ({lineage.record_path(path).name}): it was "
                "written by a run that stopped before its end, or by an older version of "
                f"selfsup. Rerun {self._rerun_hint([name])}"
            )
        return str(path), record

    def _restartable(self, node_name: str) -> bool:
        """Whether `kedro run --from-nodes node_name` can run: its inputs are on disk."""
        nodes = {node.name: node for p in _registered_pipelines().values() for node in p.nodes}
        node = nodes.get(node_name)
        return node is not None and all(
            name.startswith("params:") or _file_of(self._catalog, name) is not None
            for name in node.inputs
        )

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict) -> None:
        consumed = [name for name in node.inputs if self._tracked(name)]
        ancestries = dict(self._input_lineage(catalog, name) for name in consumed)
        inherited = lineage.merge_lineages(ancestries, self._restartable)
        self._pending[node.name] = (set(node.outputs), inherited, [])

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data, node) -> None:
        # The record goes first: a run that stops while or after replacing the file
        # leaves it without one, which consumers refuse.
        path = _file_of(self._catalog, dataset_name) if self._catalog is not None else None
        if path is not None and self._tracked(dataset_name):
            lineage.remove_record(path)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if node is None or node.name not in self._pending:
            return
        unsaved, inherited, written = self._pending[node.name]
        path = _file_of(self._catalog, dataset_name)
        if path is None:
            written.append(lineage.data_fingerprint(data))
        elif path.exists():
            written.append(lineage.file_fingerprint(path))
        unsaved.discard(dataset_name)
        if unsaved:
            return
        del self._pending[node.name]
        run = lineage.execution_id(node.name, inherited, written)
        ancestry = {**inherited, node.name: run}
        for name in node.outputs:
            path = _file_of(self._catalog, name)
            if not self._tracked(name):
                continue
            if path is None:
                self._in_memory[name] = ancestry
            elif distributed.is_main_process() and path.exists():
                lineage.write_record(path, ancestry)
