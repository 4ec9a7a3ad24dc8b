"""Parameter models: shipped values are valid, bad values fail naming the parameter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from selfsup.config import (
    EncoderConfig,
    EvaluationConfig,
    FeatureConfig,
    IJEPAConfig,
    IngestionConfig,
    MaskingConfig,
    MultiBlockConfig,
    PredictorConfig,
    PretrainingConfig,
    SplitConfig,
    TrainingConfig,
)
from selfsup.data import sources
from selfsup.data.image_folder import ImageFolderOptions
from selfsup.methods import build_method

CONF_BASE = Path(__file__).resolve().parents[1] / "conf" / "base"


def base_parameters() -> dict:
    params = {}
    for path in sorted(CONF_BASE.glob("parameters*.yml")):
        params.update(yaml.safe_load(path.read_text()) or {})
    return params


def test_shipped_parameters_are_valid():
    params = base_parameters()
    assert isinstance(params["seed"], int)
    IngestionConfig(**params["ingestion"])
    masking = MaskingConfig(**params["masking"])
    assert masking.grid_size * masking.patch_size == masking.image_size
    EncoderConfig(**params["encoder"])
    pretraining = PretrainingConfig(**params["ijepa"])
    assert pretraining.method == "ijepa"
    IJEPAConfig.model_validate(pretraining.hyperparameters)
    FeatureConfig(**params["features"])
    EvaluationConfig(**params["evaluation"])


def test_defaults_and_derived_values():
    masking = MaskingConfig()
    assert masking.grid_size == masking.image_size // masking.patch_size
    assert masking.num_patches == masking.grid_size**2
    assert MaskingConfig(image_size=28, patch_size=2).grid_size == 14
    assert PretrainingConfig(method="ijepa").training == TrainingConfig()


# (constructor, kwargs, substrings that the error message must contain)
INVALID = {
    "target_scale starts at 0": (
        MultiBlockConfig,
        {"target_scale": (0.0, 0.2)},
        ["target_scale", "(0.0, 1.0]"],
    ),
    "target_scale above 1": (
        MultiBlockConfig,
        {"target_scale": (0.5, 1.2)},
        ["target_scale", "(0.0, 1.0]"],
    ),
    "target_scale reversed": (MultiBlockConfig, {"target_scale": (0.3, 0.2)}, ["target_scale"]),
    "context_scale above 1": (MultiBlockConfig, {"context_scale": (0.9, 1.1)}, ["context_scale"]),
    "negative aspect ratio": (
        MultiBlockConfig,
        {"target_aspect_ratio": (-1.0, 1.5)},
        ["target_aspect_ratio"],
    ),
    "zero targets": (MultiBlockConfig, {"num_targets": 0}, ["num_targets"]),
    "image_size not divisible by patch_size": (
        MaskingConfig,
        {"image_size": 32, "patch_size": 5},
        ["image_size", "patch_size"],
    ),
    "grid smaller than 2x2": (MaskingConfig, {"image_size": 4, "patch_size": 4}, ["2x2"]),
    "min_keep equals num_patches": (
        MaskingConfig,
        {"multiblock": {"min_keep": 64}},
        ["min_keep", "64"],
    ),
    "min_keep close to num_patches": (
        MaskingConfig,
        {"multiblock": {"min_keep": 60}},
        ["min_keep"],
    ),
    "targets cover the grid": (
        MaskingConfig,
        {"multiblock": {"num_targets": 16, "target_scale": (0.9, 1.0)}},
        ["num_targets", "target_scale"],
    ),
    "unknown masking key": (MaskingConfig, {"patchsize": 4}, ["patchsize"]),
    "unknown ingestion source": (
        IngestionConfig,
        {"source": "imagenet"},
        ["ingestion.source", "imagenet", "digits"],
    ),
    "splits leave no train": (SplitConfig, {"val": 0.5, "test": 0.5}, ["split.val"]),
    "unknown method": (PretrainingConfig, {"method": "byol"}, ["method", "byol", "ijepa"]),
    "bad ijepa loss": (
        PretrainingConfig,
        {"method": "ijepa", "hyperparameters": {"loss": "cosine"}},
        ["ijepa hyperparameters", "loss"],
    ),
    "unknown ijepa hyperparameter": (
        PretrainingConfig,
        {"method": "ijepa", "hyperparameters": {"predicter": {}}},
        ["predicter"],
    ),
    "ema momentum above 1": (
        IJEPAConfig,
        {"ema_momentum": (0.99, 1.01)},
        ["ema_momentum"],
    ),
    "warmup longer than training": (
        TrainingConfig,
        {"epochs": 2, "warmup_epochs": 3},
        ["warmup_epochs", "epochs"],
    ),
    "warmup longer than training inside pretraining": (
        PretrainingConfig,
        {"method": "ijepa", "training": {"epochs": 1, "warmup_epochs": 2}},
        ["warmup_epochs"],
    ),
    "negative weight decay": (
        TrainingConfig,
        {"weight_decay": (-0.1, 0.4)},
        ["weight_decay"],
    ),
    "betas of 1": (TrainingConfig, {"betas": (0.9, 1.0)}, ["betas"]),
    "crop_scale above 1": (TrainingConfig, {"crop_scale": (0.3, 1.5)}, ["crop_scale"]),
    "unknown device": (TrainingConfig, {"device": "tpu"}, ["device"]),
    "heads do not divide width": (
        EncoderConfig,
        {"embed_dim": 32, "num_heads": 3},
        ["embed_dim", "num_heads"],
    ),
    "width not divisible by 4": (
        EncoderConfig,
        {"embed_dim": 30, "num_heads": 2},
        ["embed_dim"],
    ),
    "predictor heads": (PredictorConfig, {"embed_dim": 16, "num_heads": 3}, ["num_heads"]),
    "non-positive C": (EvaluationConfig, {"c_grid": [0.0, 1.0]}, ["c_grid"]),
    "zero shots": (EvaluationConfig, {"low_shot": {"shots": [0, 5]}}, ["shots"]),
    "unknown pooling": (FeatureConfig, {"pooling": "cls"}, ["pooling"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_parameters_fail_naming_the_parameter(case):
    model, kwargs, fragments = INVALID[case]
    with pytest.raises(ValidationError) as caught:
        model(**kwargs)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_validation_error_is_a_value_error():
    """Callers outside pydantic can catch the ValueError they expect."""
    with pytest.raises(ValueError, match="patch_size"):
        MaskingConfig(image_size=32, patch_size=5)


def test_models_are_frozen():
    config = MaskingConfig()
    with pytest.raises(ValidationError):
        config.image_size = 64  # type: ignore[misc]


def test_method_hyperparameters_are_validated_once_into_the_methods_model():
    """The mapping from the YAML becomes the method's own model when the parameters are
    read; building the method uses that object as it is, without validating again."""
    pretraining = PretrainingConfig(method="ijepa", hyperparameters={"loss": "smooth_l1"})
    assert isinstance(pretraining.hyperparameters, IJEPAConfig)
    assert pretraining.hyperparameters.loss == "smooth_l1"
    masking = MaskingConfig()
    method = build_method(
        pretraining.method, pretraining.hyperparameters, EncoderConfig(), masking, 1
    )
    assert method.config is pretraining.hyperparameters
    assert PretrainingConfig(**pretraining.model_dump()) == pretraining


@pytest.mark.parametrize(
    ("ingestion", "named"),
    [
        ({"source": "image_folder", "options": {}}, "ingestion.options.path: Field required"),
        ({"source": "image_folder", "options": {"path": "p", "channels": 2}}, "options.channels"),
        ({"source": "digits", "options": {"x": 1}}, "digits source takes no ingestion.options"),
        ({"source": "cifar", "options": {"path": "p", "label_mode": "x"}}, "options.label_mode"),
        (
            {"eval_source": {"source": "arrays", "options": {"path": "a.npz", "extra": 1}}},
            "ingestion.eval_source.options.extra",
        ),
        ({"source": "nope"}, "unknown source 'nope' in ingestion.source"),
        ({"eval_source": {"source": "nope"}}, "unknown source 'nope' in ingestion.eval_source"),
    ],
)
def test_source_options_are_checked_with_the_parameters_naming_the_key(ingestion, named):
    """A source's options fail when the parameters are read, before any node runs."""
    with pytest.raises(ValidationError, match=re.escape(named)):
        IngestionConfig(**ingestion)


def test_source_options_are_validated_once(monkeypatch):
    """The reader gets the options model built when the parameters were read."""
    ingestion = IngestionConfig(source="image_folder", options={"path": "photos", "channels": 1})
    assert isinstance(ingestion.options, ImageFolderOptions)
    received = []
    monkeypatch.setitem(
        sources.SOURCES, "image_folder", lambda options, size: received.append(options)
    )
    sources.load_source(ingestion.source, ingestion.options, 16)
    assert received == [ingestion.options] and received[0] is ingestion.options
    assert IngestionConfig(**ingestion.model_dump()) == ingestion
