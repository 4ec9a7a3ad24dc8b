"""Project settings: how configuration environments and runtime parameters merge."""

from __future__ import annotations

import shutil
from pathlib import Path

from kedro.config import OmegaConfigLoader

from selfsup.settings import CONFIG_LOADER_ARGS, HOOKS

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
    assert params["ijepa"]["training"]["batch_size"] == 64


def test_runtime_params_with_a_local_parameters_file_keep_base_blocks(tmp_path):
    params = loader(tmp_path, "seed: 1\n", RUNTIME)["parameters"]
    assert params["seed"] == 1
    assert params["ijepa"]["training"]["epochs"] == 1
    assert params["ijepa"].get("method") == "ijepa"


def test_partial_local_block_overrides_only_its_keys(tmp_path):
    params = loader(tmp_path, "ijepa:\n  training:\n    epochs: 5\n", {})["parameters"]
    assert params["ijepa"]["training"]["epochs"] == 5
    assert params["ijepa"].get("method") == "ijepa"
