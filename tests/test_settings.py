"""Project settings: how configuration environments and runtime parameters merge."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from kedro.config import OmegaConfigLoader
from kedro_telemetry.plugin import _check_for_telemetry_consent

from selfsup.config import EncoderConfig, IngestionConfig, MaskingConfig, PretrainingConfig
from selfsup.masks import build_mask_sampler
from selfsup.methods import build_method
from selfsup.settings import (
    BASELINE_NAMESPACES,
    CONFIG_LOADER_ARGS,
    HOOKS,
    PRETRAINED_NAMESPACES,
)

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {"ijepa": {"training": {"epochs": 1}}}


def loader(tmp_path: Path, local_parameters: str | None, runtime_params: dict):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    if local_parameters is not None:
        (conf / "local" / "parameters.yml").write_text(local_parameters)
    return OmegaConfigLoader(str(conf), runtime_params=runtime_params, **CONFIG_LOADER_ARGS)


def test_report_hook_is_registered():
    assert any(type(hook).__name__ == "ReportHooks" for hook in HOOKS)


def test_runtime_params_deep_merge_into_base(tmp_path):
    params = loader(tmp_path, None, RUNTIME)["parameters"]
    assert params["ijepa"]["training"]["epochs"] == 1
    assert params["ijepa"]["method"] == "ijepa"
    assert params["ijepa"]["training"]["batch_size"] == 32  # the base file's, kept


def test_runtime_params_with_a_local_parameters_file_keep_base_blocks(tmp_path):
    params = loader(tmp_path, "seed: 1\n", RUNTIME)["parameters"]
    assert params["seed"] == 1
    assert params["ijepa"]["training"]["epochs"] == 1
    assert params["ijepa"].get("method") == "ijepa"


def test_partial_local_block_overrides_only_its_keys(tmp_path):
    params = loader(tmp_path, "ijepa:\n  training:\n    epochs: 5\n", {})["parameters"]
    assert params["ijepa"]["training"]["epochs"] == 5
    assert params["ijepa"].get("method") == "ijepa"


def test_vit_b16_environment_is_the_papers_recipe_and_builds(tmp_path):
    """`kedro run --env vit_b16`: every block validates, multi-block masks are feasible on
    the 14x14 grid, and each method builds a ViT-B/16 (about 86M encoder parameters)."""

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    shutil.copytree(ROOT / "conf" / "vit_b16", conf / "vit_b16")
    params = OmegaConfigLoader(str(conf), env="vit_b16", **CONFIG_LOADER_ARGS)["parameters"]
    masking = MaskingConfig(**params["masking"])
    assert (masking.image_size, masking.patch_size, masking.grid_size) == (224, 16, 14)
    assert masking.multiblock.num_targets == 4  # the paper's, not conf/base's 2
    build_mask_sampler(masking).check_feasible()
    ingestion = IngestionConfig(**params["ingestion"])
    assert ingestion.source == "image_folder"
    encoder = EncoderConfig(**params["encoder"])
    assert encoder.weight_init == "trunc_normal"  # I-JEPA's; conf/base's xavier does not leak in
    base = OmegaConfigLoader(str(conf), env="base", **CONFIG_LOADER_ARGS)["parameters"]
    for name in PRETRAINED_NAMESPACES:
        config = PretrainingConfig(**params[name])
        assert config.training.batch_size == 2048 and config.training.epochs == 300
        # conf/base's monitors merge in (I-JEPA's every 40 steps, the others' every 20)
        assert config.monitors.every_steps == base[name]["monitors"]["every_steps"]
        method = build_method(name, config.hyperparameters, encoder, masking, in_chans=3)
        encoder_params = sum(p.numel() for p in method.evaluation_encoder().parameters())
        assert 85e6 < encoder_params < 87e6, name
    assert params["ijepa"]["hyperparameters"]["predictor"]["embed_dim"] == 384
    assert params["mae"]["training"]["betas"] == [0.9, 0.95]
    # Augmentations: I-JEPA crops only; MAE crops and flips; SimCLR's views flip.
    assert params["ijepa"]["training"]["horizontal_flip_p"] == 0.0
    assert params["mae"]["training"]["horizontal_flip_p"] == 0.5
    assert params["simclr"]["hyperparameters"]["augmentations"]["horizontal_flip_p"] == 0.5


def test_dvc_stages_loop_over_the_methods_the_pipelines_register():
    """The method list lives in settings.py and in dvc.yaml's `foreach` lists: a method
    added to one and not the other would be trained by `kedro run` but not by `dvc
    repro` (or the reverse)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    methods = list(PRETRAINED_NAMESPACES)
    baselines = list(BASELINE_NAMESPACES)
    assert stages["pretrain"]["foreach"] == methods
    assert stages["features"]["foreach"] == methods
    assert stages["baseline_features"]["foreach"] == baselines
    assert stages["evaluate"]["foreach"] == methods + baselines
    report_inputs = " ".join(str(dep) for dep in stages["report"]["deps"])
    for name in methods + baselines:
        assert f"data/07_model_output/{name}/metrics.json" in report_inputs


def test_one_line_of_the_shared_training_block_changes_every_method(tmp_path):
    params = loader(tmp_path, None, {})["parameters"]
    shared = params["_training"]
    assert {params[m]["training"]["loader_workers"] for m in PRETRAINED_NAMESPACES} == {
        shared["loader_workers"]
    }
    assert params["ijepa"]["training"]["epochs"] == 120  # a method's own value wins
    assert params["ijepa"]["training"]["batch_size"] == 32
    assert params["mae"]["training"]["batch_size"] == shared["batch_size"] == 64
    assert params["mae"]["training"]["epochs"] == shared["epochs"]
    assert params["ijepa"]["monitors"]["every_steps"] == 200
    assert params["simclr"]["monitors"] == params["_monitors"]

    pretraining = tmp_path / "conf" / "base" / "parameters_pretraining.yml"
    text = pretraining.read_text()
    assert text.count("  loader_workers: auto") == 1
    pretraining.write_text(text.replace("  loader_workers: auto", "  loader_workers: 3"))
    changed = OmegaConfigLoader(str(tmp_path / "conf"), runtime_params={}, **CONFIG_LOADER_ARGS)[
        "parameters"
    ]
    assert [changed[m]["training"]["loader_workers"] for m in PRETRAINED_NAMESPACES] == [3] * len(
        PRETRAINED_NAMESPACES
    )


def test_telemetry_is_off_for_every_kedro_command_in_the_project(monkeypatch):
    """`dvc repro` and `kedro viz` start kedro without DO_NOT_TRACK: the committed
    `.telemetry` file must say no by itself."""
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    monkeypatch.delenv("KEDRO_DISABLE_TELEMETRY", raising=False)
    assert _check_for_telemetry_consent(ROOT) is False
