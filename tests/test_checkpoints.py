"""Resuming: which checkpoint is used, what is refused, and what is never written."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch

from selfsup.checkpoints import (
    CheckpointMismatchError,
    NonFiniteWeightsError,
    TrainingCheckpoints,
    identity_differences,
)
from selfsup.config import EncoderConfig, MaskingConfig, PretrainingConfig
from selfsup.pipelines.pretraining.nodes import _run_identity

IDENTITY = {"method": "ijepa", "training": {"lr": 0.001, "epochs": 2}, "seed": 42}


def state(step: int, value: float = 1.0) -> dict:
    return {"step": step, "method": {"weight": torch.full((3,), value)}, "history": []}


def written(folder, steps=(1, 2)) -> TrainingCheckpoints:
    checkpoints = TrainingCheckpoints(folder, 1, 5, IDENTITY)
    for step in steps:
        checkpoints.save(state(step, float(step)))
    return checkpoints


def test_refusal_names_each_differing_key_with_old_and_new_values(tmp_path):
    written(tmp_path)
    changed = {**IDENTITY, "training": {"lr": 0.002, "epochs": 2}, "seed": 1}
    with pytest.raises(CheckpointMismatchError) as refused:
        TrainingCheckpoints(tmp_path, 1, 5, changed).load_latest()
    message = str(refused.value)
    assert "training.lr: 0.001 -> 0.002" in message
    assert "seed: 42 -> 1" in message
    assert "epochs" not in message


def test_differences_flatten_nested_keys_and_show_missing_ones():
    assert identity_differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == [
        'a.c: "(not set)" -> 2'
    ]


def test_report_only_masking_settings_do_not_block_resume():
    pretraining = PretrainingConfig(method="ijepa")
    identity = _run_identity(pretraining, EncoderConfig(), MaskingConfig(), 42, 100)
    reports_changed = MaskingConfig(stats_num_masks=10, preview_images=2)
    assert _run_identity(pretraining, EncoderConfig(), reports_changed, 42, 100) == identity
    training_changed = MaskingConfig(patch_size=8)
    assert _run_identity(pretraining, EncoderConfig(), training_changed, 42, 100) != identity


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    checkpoints = written(tmp_path)
    newest = checkpoints.latest()
    os.truncate(newest, newest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="selfsup.checkpoints"):
        resumed = checkpoints.load_latest()
    assert resumed["step"] == 1
    assert torch.equal(resumed["method"]["weight"], torch.full((3,), 1.0))
    assert str(newest) in caplog.text and "truncated or corrupt" in caplog.text


class RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_checkpoint_that_would_run_code_is_not_loaded(tmp_path, caplog):
    checkpoints = written(tmp_path, steps=(1,))
    crafted = tmp_path / "step-00000009.pt"
    torch.save({"step": 9, "payload": RunsCode()}, crafted)
    with caplog.at_level(logging.WARNING, logger="selfsup.checkpoints"):
        resumed = checkpoints.load_latest()
    assert resumed["step"] == 1
    assert str(crafted) in caplog.text and "could run code" in caplog.text
    assert "weights_only=False" not in caplog.text


def test_no_readable_checkpoint_means_a_fresh_start_said_in_the_log(tmp_path, caplog):
    (tmp_path / "step-00000001.pt").write_bytes(b"not a checkpoint")
    checkpoints = TrainingCheckpoints(tmp_path, 1, 5, IDENTITY)
    with caplog.at_level(logging.INFO, logger="selfsup.checkpoints"):
        assert checkpoints.load_latest() is None
    assert "no readable checkpoint" in caplog.text
    with caplog.at_level(logging.INFO, logger="selfsup.checkpoints"):
        assert TrainingCheckpoints(tmp_path / "empty", 1, 5, IDENTITY).load_latest() is None
    assert "no checkpoint in" in caplog.text


def test_non_finite_weights_are_never_saved(tmp_path):
    checkpoints = written(tmp_path, steps=(1,))
    with pytest.raises(NonFiniteWeightsError, match="weight hold NaN") as refused:
        checkpoints.save(state(2, float("nan")))
    assert "step-00000001.pt" in str(refused.value)
    assert [p.name for p in checkpoints.paths()] == ["step-00000001.pt"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_pickle_error_class_is_what_torch_raises_for_refused_objects(tmp_path):
    torch.save({"payload": RunsCode()}, tmp_path / "x.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "x.pt", weights_only=True)
