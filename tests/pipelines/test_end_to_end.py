"""`kedro run` on a temporary copy of the project, with a tiny configuration.

The copy has the project's conf/base, pyproject.toml, an empty src/ (Kedro requires the
folder; the package itself is imported from the editable install) and an empty data/
tree, so the repository's data/ is never touched.

Runtime parameters go in through `kedro run --config run.yml` (`run: params: {...}`),
which feeds the same runtime-parameter merge as `--params`: `--params` splits its value
on commas, so it cannot carry the list `evaluation.c_grid=[0.1,1.0]`, and a
conf/local/parameters.yml cannot be combined with `--params` either, because Kedro's
default (destructive) merge lets the local environment's top-level keys, which then
include the partial runtime blocks, replace whole base blocks such as `ijepa`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml

from selfsup.data.preprocessing import to_model_input
from selfsup.data.sources import load_source
from selfsup.evaluation import encoder_features
from selfsup.models.vit import encoder_from_checkpoint
from tests.helpers import TINY_RUN, expected_block_dims
from tests.project import kedro, make_project_copy

# Whole kedro / dvc / torchrun runs in subprocesses: the slow tier.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("ijepa", "mae", "simclr", "lejepa")
NAMES = (*METHODS, "raw_pixels", "random_init")
PIPELINES = {"ingestion", "masking", "pretraining", "features", "evaluation", "report"}
PIPELINES |= {"__default__"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def data_files(project: Path, folder: str = "") -> list[Path]:
    return sorted(p for p in (project / "data" / folder).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    project = make_project_copy(tmp_path_factory.mktemp("project"))
    (project / "run.yml").write_text(yaml.safe_dump({"run": {"params": TINY_RUN}}))
    result = kedro(project, "run", "--config", "run.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return project, output


@pytest.fixture(scope="module")
def data(tiny_run) -> Path:
    return tiny_run[0] / "data"


@pytest.fixture(scope="module")
def samples(data) -> pd.DataFrame:
    return pd.read_csv(data / "02_intermediate" / "samples.csv")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_catalog_output_exists_and_data_carries_its_lineage(data):
    """Every file in the catalog is written; every one that is not a report (kedro-viz
    layer `reporting`) has its lineage record beside it."""
    catalog = yaml.safe_load((ROOT / "conf" / "base" / "catalog.yml").read_text())
    expected, recorded = set(), set()
    for name, entry in catalog.items():
        if "filepath" not in entry:  # held in memory within a run
            continue
        if "{method}" in name:
            paths = {entry["filepath"].format(method=m) for m in METHODS}
        elif "{name}" in name:
            paths = {entry["filepath"].format(name=n) for n in NAMES}
        else:
            paths = {entry["filepath"]}
        expected |= paths
        if entry.get("metadata", {}).get("kedro-viz", {}).get("layer") != "reporting":
            recorded |= paths
    root = data.parent
    assert not sorted(path for path in expected if not (root / path).exists())
    # Folder datasets (the timm export) hold files.
    assert all(any((root / path).iterdir()) for path in expected if (root / path).is_dir())
    assert len(recorded) > 10
    assert not sorted(path for path in recorded if not (root / f"{path}.lineage.json").is_file())
    records = {
        p.relative_to(root).as_posix().removesuffix(".lineage.json")
        for p in root.rglob("*.lineage.json")
    }
    assert records == recorded


def test_ingested_images_and_samples(data, samples):
    images = np.load(data / "02_intermediate" / "images.npy")
    assert images.shape == (1797, 8, 8, 1)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, load_source("digits", {}).images)
    assert list(samples.columns) == ["index", "label", "class_name", "split", "pretrain", "path"]
    assert samples["pretrain"].tolist() == (samples["split"] == "train").tolist()
    assert samples["path"].tolist() == [f"digits[{i}]" for i in range(1797)]
    assert len(samples) == 1797
    assert set(samples["split"]) == {"train", "val", "test"}
    assert samples["index"].tolist() == list(range(1797))


def test_dataset_report(data, samples):
    report = read_json(data / "08_reporting" / "dataset_report.json")
    assert report["num_images"] == 1797
    assert report["image_shape"] == [8, 8, 1]
    assert report["num_classes"] == 10
    assert sum(report["split_counts"].values()) == 1797
    assert report["split_counts"] == {**samples["split"].value_counts().to_dict(), "pretrain": 0}
    assert report["num_pretraining_images"] == report["split_counts"]["train"]
    assert report["files"] == [
        {"key": "source", "source": "digits", "accepted": 1797, "rejected": 0, "ignored": 0}
    ]
    assert sum(sum(c.values()) for c in report["class_counts"].values()) == 1797
    # 0.2 / 0.2 stratified split of 1797 images.
    assert abs(report["split_counts"]["test"] - 0.2 * 1797) <= 1
    assert abs(report["split_counts"]["val"] - 0.2 * 1797) <= 1


def test_model_input_and_train_only_normalization(data, samples):
    model_input = np.load(data / "05_model_input" / "images.npy")
    assert model_input.shape == (1797, 32, 32, 1)
    assert model_input.dtype == np.uint8
    normalization = read_json(data / "05_model_input" / "normalization.json")
    assert len(normalization["mean"]) == len(normalization["std"]) == 1
    assert 0 < normalization["mean"][0] < 1
    train = model_input[samples["split"].to_numpy() == "train"].astype(np.float64) / 255
    assert normalization["mean"][0] == pytest.approx(train.mean(), abs=1e-9)
    assert normalization["std"][0] == pytest.approx(train.std(), abs=1e-9)
    grid = read_json(data / "05_model_input" / "patch_grid.json")
    assert grid["grid"] == [8, 8]
    assert grid["num_patches"] == 64


def test_mask_statistics(data):
    stats = read_json(data / "08_reporting" / "mask_stats.json")
    masking = yaml.safe_load((ROOT / "conf" / "base" / "parameters_masking.yml").read_text())
    blocks = masking["masking"]["multiblock"]
    assert stats["num_masks"] >= 1000
    assert stats["context_patches_inside_targets"] == 0
    assert stats["grid"] == [8, 8]
    # Block areas reachable after rounding to whole patches, over the configured ranges.
    areas = [
        np.prod(expected_block_dims(s, a, 8)) / 64
        for s in np.linspace(*blocks["target_scale"], 41)
        for a in np.linspace(*blocks["target_aspect_ratio"], 41)
    ]
    scale = stats["target_block_scale"]
    assert min(areas) <= scale["min"] <= scale["mean"] <= scale["max"] <= max(areas)
    lo, hi = blocks["target_scale"]
    assert lo - 1 / 16 <= scale["mean"] <= hi + 1 / 16


def test_figures_are_png_files(data):
    paths = [data / "08_reporting" / name for name in ("mask_preview.png", "comparison.png")]
    for picture in ("loss_curve.png", "examples.png"):
        paths += [data / "08_reporting" / method / picture for method in METHODS]
    paths += [data / "08_reporting" / name / "tsne.png" for name in NAMES]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path


@pytest.mark.parametrize("method", METHODS)
def test_training_history(data, samples, method):
    history = pd.read_csv(data / "07_model_output" / method / "training_history.csv")
    assert {"loss", "lr", "weight_decay", "images_seen", "elapsed_s"} <= set(history.columns)
    num_train = int((samples["split"] == "train").sum())
    assert len(history) == num_train // 32  # 1 epoch, batch 32
    assert history["images_seen"].tolist() == [32 * (i + 1) for i in range(len(history))]
    assert np.isfinite(history["loss"]).all()
    assert ("momentum" in history) == (method == "ijepa")


@pytest.mark.parametrize("method", METHODS)
def test_dvclive_logged_the_same_curves_as_the_history(data, method):
    history = pd.read_csv(data / "07_model_output" / method / "training_history.csv")
    curves = data / "08_reporting" / method / "dvclive" / "plots" / "metrics" / "train"
    logged = {path.stem for path in curves.glob("*.tsv")}
    ijepa_only = {"momentum", "prediction_cosine"} if method == "ijepa" else set()
    # Monitors (every conf/base every_steps; the 1-epoch tiny run reaches no kNN epoch)
    # log at their steps only.
    pretraining = yaml.safe_load(
        (ROOT / "conf" / "base" / "parameters_pretraining.yml").read_text()
    )
    every = pretraining[method]["monitors"]["every_steps"]
    assert logged == {"loss", "lr", "weight_decay", "rankme", "feature_std"} | ijepa_only
    for name in logged:
        curve = pd.read_csv(curves / f"{name}.tsv", sep="\t")
        measured = history[["step", name]].dropna()
        assert curve["step"].tolist() == measured["step"].tolist()
        np.testing.assert_allclose(curve[name], measured[name], rtol=1e-6)
    assert history["rankme"].notna().tolist() == [step % every == 0 for step in history["step"]]


def test_ijepa_momentum_follows_the_configured_schedule(data):
    history = pd.read_csv(data / "07_model_output" / "ijepa" / "training_history.csv")
    pretraining = yaml.safe_load(
        (ROOT / "conf" / "base" / "parameters_pretraining.yml").read_text()
    )
    start, end = pretraining["ijepa"]["hyperparameters"]["ema_momentum"]
    assert history["momentum"].iloc[0] == pytest.approx(start)
    assert history["momentum"].iloc[-1] == pytest.approx(end)


def test_simclr_loss_starts_near_chance(data):
    """At init the 2N-way NT-Xent is close to log(2N - 1) for batch N = 32."""
    history = pd.read_csv(data / "07_model_output" / "simclr" / "training_history.csv")
    assert history["loss"].iloc[0] == pytest.approx(np.log(63), abs=0.5)


@pytest.mark.parametrize("method", METHODS)
def test_encoder_checkpoint_produces_the_saved_features(data, method):
    checkpoint = torch.load(data / "06_models" / method / "encoder.pt", weights_only=True)
    assert checkpoint["config"]["encoder"]["embed_dim"] == 32
    assert checkpoint["config"]["encoder"]["depth"] == 1
    assert checkpoint["config"]["image_size"] == 32
    encoder = encoder_from_checkpoint(checkpoint)
    model_input = np.load(data / "05_model_input" / "images.npy")
    normalization = read_json(data / "05_model_input" / "normalization.json")
    features = encoder_features(encoder, to_model_input(model_input, normalization))
    saved = np.load(data / "04_feature" / method / "features.npy")
    np.testing.assert_allclose(saved, features, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_timm_export_gives_the_saved_features(data, method):
    """The three lines the README shows a user, on what `kedro run` wrote."""
    folder = data / "06_models" / method / "timm"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    model_input = np.load(data / "05_model_input" / "images.npy")
    normalization = read_json(data / "05_model_input" / "normalization.json")
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (1, 32, 32)
    assert list(config["mean"]) == normalization["mean"]
    assert list(config["std"]) == normalization["std"]
    with torch.no_grad():
        exported = model(to_model_input(model_input, normalization)).numpy()
    saved = np.load(data / "04_feature" / method / "features.npy")
    np.testing.assert_allclose(exported, saved, atol=1e-4)


def test_features(data):
    shapes = {}
    for name in NAMES:
        features = np.load(data / "04_feature" / name / "features.npy")
        assert features.shape[0] == 1797, name
        assert np.isfinite(features).all(), name
        shapes[name] = features.shape[1]
    assert shapes == {
        "ijepa": 32,
        "mae": 32,
        "simclr": 32,
        "lejepa": 32,
        "raw_pixels": 32 * 32,
        "random_init": 32,
    }
    # Each method trained its own encoder: no two feature sets are the same (the shared
    # initial weights are checked in test_nodes, random_init baseline test).
    for a, b in [("ijepa", "mae"), ("ijepa", "simclr"), ("mae", "random_init")]:
        assert not np.allclose(
            np.load(data / "04_feature" / a / "features.npy"),
            np.load(data / "04_feature" / b / "features.npy"),
        ), (a, b)
    model_input = np.load(data / "05_model_input" / "images.npy").astype(np.float64)
    normalization = read_json(data / "05_model_input" / "normalization.json")
    expected = (model_input / 255 - normalization["mean"][0]) / normalization["std"][0]
    raw = np.load(data / "04_feature" / "raw_pixels" / "features.npy")
    np.testing.assert_allclose(raw, expected.reshape(1797, -1), atol=1e-5)


def test_metrics(data):
    metrics = read_json(data / "08_reporting" / "metrics.json")
    assert set(metrics) == set(NAMES)
    for name, m in metrics.items():
        accuracy = m["linear_probe"]["test_accuracy"]
        assert 0.5 < accuracy <= 1.0, name  # digits are easy
        assert m["linear_probe"]["C"] in (0.1, 1.0), name  # the runtime c_grid
        assert set(m["low_shot"]) == {"1", "5", "10"}, name
        for shots in m["low_shot"].values():
            assert 0 <= shots["mean"] <= 1 and shots["std"] >= 0
        assert 0 <= m["knn"]["test_accuracy"] <= 1, name
        assert read_json(data / "07_model_output" / name / "metrics.json") == m


def test_comparison_written_and_logged(tiny_run, data):
    _, output = tiny_run
    metrics = read_json(data / "08_reporting" / "metrics.json")
    comparison = pd.read_csv(data / "08_reporting" / "comparison.csv")
    assert comparison["features"].tolist() == list(NAMES)
    by_name = comparison.set_index("features")
    for name in NAMES:
        m = metrics[name]
        row = by_name.loc[name]
        assert row["linear_probe"] == pytest.approx(100 * m["linear_probe"]["test_accuracy"])
        assert row["5_shot_mean"] == pytest.approx(100 * m["low_shot"]["5"]["mean"])
        assert row["knn"] == pytest.approx(100 * m["knn"]["test_accuracy"])
    for method in METHODS:
        history = pd.read_csv(data / "07_model_output" / method / "training_history.csv")
        row = by_name.loc[method]
        assert row["kind"] == "pretrained"
        assert row["epochs"] == 1
        assert row["pretraining_s"] == pytest.approx(history["elapsed_s"].iloc[-1], rel=1e-3)
        assert row["images_per_s"] == pytest.approx(
            history["images_seen"].iloc[-1] / history["elapsed_s"].iloc[-1], rel=1e-3
        )
        assert row["vs_random_init_linear_probe"] == pytest.approx(
            row["linear_probe"] - by_name.loc["random_init", "linear_probe"], abs=1e-3
        )
    assert by_name.loc[["raw_pixels", "random_init"], "pretraining_s"].isna().all()

    report = (data / "08_reporting" / "comparison.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == list(NAMES)
    for row in rows:
        assert row in output
    for method in METHODS:
        assert any(line.startswith(f"- {method} ") for line in report.splitlines()), method


def test_one_namespace_runs_alone(tiny_run, tmp_path):
    """`kedro run --namespaces mae` retrains and re-evaluates mae and nothing else."""
    source, _ = tiny_run
    project = tmp_path / "project"
    shutil.copytree(source, project)
    before = {path: path.stat().st_mtime_ns for path in data_files(project)}
    result = kedro(project, "run", "--namespaces", "mae", "--config", "run.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    changed = {
        path.relative_to(project / "data").as_posix()
        for path in data_files(project)
        if path.stat().st_mtime_ns != before.get(path)
    }
    live_logs = {path for path in changed if path.startswith("08_reporting/mae/dvclive/")}
    assert "08_reporting/mae/dvclive/plots/metrics/train/loss.tsv" in live_logs
    checkpoints = {path for path in changed if path.startswith("06_models/mae/checkpoints/")}
    assert checkpoints, "the final training checkpoint"
    data_written = {
        "06_models/mae/encoder.pt",
        "07_model_output/mae/training_history.csv",
        "04_feature/mae/features.npy",
        "07_model_output/mae/metrics.json",
        "06_models/mae/timm",
    }
    records = {f"{path}.lineage.json" for path in data_written}
    exported = {"06_models/mae/timm/config.json", "06_models/mae/timm/model.safetensors"}
    assert changed - live_logs - checkpoints == {
        *(data_written - {"06_models/mae/timm"}),
        *exported,
        *records,
        "08_reporting/mae/loss_curve.png",
        "08_reporting/mae/examples.png",
        "08_reporting/mae/tsne.png",
    }


def test_partial_run_without_its_inputs_names_the_pipelines_to_run_first(tmp_path):
    project = make_project_copy(tmp_path)
    result = kedro(project, "run", "--namespaces", "mae", timeout=120)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "MissingInputsError" in output
    assert "model_input_images, normalization, samples" in output
    assert "kedro run --pipelines ingestion,masking" in output
    assert "Running node" not in output
    assert not data_files(project)


def test_invalid_parameter_fails_before_any_node_runs(tmp_path):
    project = make_project_copy(tmp_path)
    result = kedro(project, "run", "--params", "masking.patch_size=5", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "patch_size" in output
    assert "Running node" not in output
    assert not data_files(project, "06_models")
    assert not data_files(project)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ("features.pooling=grid,features.grid_cells=9", "features.grid_cells=9"),
        ("features.pooling=last4,encoder.depth=2", "encoder.depth"),
    ],
)
def test_a_read_out_the_encoder_cannot_give_fails_before_pretraining(tmp_path, params, named):
    project = make_project_copy(tmp_path)
    result = kedro(project, "run", "--params", params, timeout=120)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert named in output
    assert "Running node" not in output
    assert not data_files(project)


def test_registry_lists_every_pipeline(tmp_path):
    project = make_project_copy(tmp_path)
    result = kedro(project, "registry", "list", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = {
        line.strip()[2:] for line in result.stdout.splitlines() if line.strip().startswith("- ")
    }
    assert listed == PIPELINES


def test_kedro_viz_build_shows_every_pipeline_namespace_and_preview(tiny_run, tmp_path):
    # `kedro viz build` exits 0 even when it fails, so the test reads what it wrote.
    project = tmp_path / "project"
    shutil.copytree(tiny_run[0], project)
    result = kedro(project, "viz", "build", "--include-previews")
    assert result.returncode == 0, result.stderr[-3000:]
    api = project / "build" / "api"
    assert (api / "main").is_file(), (result.stdout + result.stderr)[-3000:]
    main = read_json(api / "main")
    assert {p["id"] for p in main["pipelines"]} == PIPELINES
    assert set(NAMES) <= set(main["modular_pipelines"])
    # kedro-viz orders layers by the data flow.
    layers = main["layers"]
    assert set(layers) == {
        "intermediate",
        "model_input",
        "models",
        "feature",
        "model_output",
        "reporting",
    }
    assert layers[0] == "intermediate" and layers[-1] == "reporting"
    ids = {node["name"]: node["id"] for node in main["nodes"]}
    metrics = read_json(api / "nodes" / ids["metrics"])
    assert metrics["preview_type"] == "JSONPreview"
    assert set(json.loads(metrics["preview"])) == set(NAMES)
    for name in ("comparison_chart", "mask_preview", *(f"{m}.loss_curve" for m in METHODS)):
        assert read_json(api / "nodes" / ids[name])["preview_type"] == "ImagePreview", name
    assert read_json(api / "nodes" / ids["comparison"])["preview_type"] == "TablePreview"
    pictures = [f"{m}.examples" for m in METHODS] + [f"{n}.tsne" for n in NAMES]
    for name in pictures:
        assert read_json(api / "nodes" / ids[name])["preview_type"] == "ImagePreview", name
    # The project's own datasets: arrays (shape, dtype, first rows), the encoder's and
    # the timm export's configuration, the comparison rendered from Markdown.
    for name in ("images", "model_input_images", *(f"{n}.features" for n in NAMES)):
        array = read_json(api / "nodes" / ids[name])
        assert array["preview_type"] == "HTMLPreview", name
        assert "shape (" in array["preview"] and "<table" in array["preview"], name
    features = read_json(api / "nodes" / ids["ijepa.features"])["preview"]
    assert "shape (1797, 32), dtype float32" in features
    encoder = read_json(api / "nodes" / ids["ijepa.encoder"])
    assert encoder["preview_type"] == "JSONPreview"
    assert json.loads(encoder["preview"])["encoder"]["embed_dim"] == 32
    exported = read_json(api / "nodes" / ids["ijepa.timm_encoder"])
    assert exported["preview_type"] == "JSONPreview"
    assert json.loads(exported["preview"])["model_args"]["embed_dim"] == 32
    report = read_json(api / "nodes" / ids["comparison_report"])
    assert report["preview_type"] == "HTMLPreview"
    assert "<table>" in report["preview"] and "<td>ijepa</td>" in report["preview"]
