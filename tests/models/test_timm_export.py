"""The encoder exported in timm's format gives selfsup's pooled features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from selfsup.data.preprocessing import NormalizedImages, to_model_input
from selfsup.evaluation import encoder_features
from selfsup.masks import MaskingConfig
from selfsup.methods import METHODS, build_method
from selfsup.models.timm_export import save_timm_folder, timm_architecture, timm_encoder
from selfsup.models.vit import EncoderConfig, build_encoder, encoder_checkpoint

ROOT = Path(__file__).resolve().parents[2]
NORMALIZATION = {"mean": [0.31], "std": [0.27]}


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight moved off its initial value (LayerNorms included), as training does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def uint8_images(count: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size, channels), dtype=np.uint8)


def load_as_a_user_would(folder: Path) -> torch.nn.Module:
    return timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_methods_encoder_loads_in_timm_and_gives_its_features(method, tmp_path):
    encoder_config = EncoderConfig(embed_dim=32, depth=2, num_heads=2)
    masking = MaskingConfig(image_size=16, patch_size=4)
    torch.manual_seed(0)
    trained = build_method(method, {}, encoder_config, masking, 1, NORMALIZATION)
    encoder = perturbed(trained.evaluation_encoder())
    checkpoint = encoder_checkpoint(encoder, encoder_config, 16, 4, NORMALIZATION)
    save_timm_folder(timm_encoder(checkpoint, f"selfsup-{method}"), tmp_path)

    model = load_as_a_user_would(tmp_path)
    images = NormalizedImages(uint8_images(6, 16, 1), NORMALIZATION)
    expected = encoder_features(encoder, images, pooling="last", batch_size=4)
    with torch.no_grad():
        exported = model(images[np.arange(6)]).numpy()
    assert exported.shape == (6, 32)
    np.testing.assert_allclose(exported, expected, atol=1e-5)
    assert model.pretrained_cfg["tag"] == f"selfsup-{method}"


def test_timms_own_transform_prepares_images_as_the_pipeline_does(tmp_path):
    encoder_config = EncoderConfig(embed_dim=32, depth=1, num_heads=2)
    encoder = perturbed(build_encoder(encoder_config, 16, 4, 3))
    normalization = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    checkpoint = encoder_checkpoint(encoder, encoder_config, 16, 4, normalization)
    save_timm_folder(timm_encoder(checkpoint), tmp_path)
    model = load_as_a_user_would(tmp_path)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    pictures = uint8_images(3, 16, 3)
    through_timm = torch.stack([transform(Image.fromarray(p)) for p in pictures])
    torch.testing.assert_close(through_timm, to_model_input(pictures, normalization))


def test_the_folder_holds_timms_files_and_the_data_config(tmp_path):
    encoder_config = EncoderConfig(embed_dim=32, depth=1, num_heads=2)
    encoder = build_encoder(encoder_config, 16, 4, 1)
    save_timm_folder(
        timm_encoder(encoder_checkpoint(encoder, encoder_config, 16, 4, NORMALIZATION)),
        tmp_path / "timm",
    )
    assert sorted(p.name for p in (tmp_path / "timm").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["model_args"]["class_token"] is False
    assert config["model_args"]["global_pool"] == "avg"
    data = config["pretrained_cfg"]
    assert data["input_size"] == [1, 16, 16]
    assert data["mean"] == NORMALIZATION["mean"] and data["std"] == NORMALIZATION["std"]
    assert "license" not in data  # not the ImageNet checkpoint's entry
    # A second export replaces the folder whole; no temporary folder is left beside it.
    save_timm_folder(
        timm_encoder(encoder_checkpoint(encoder, encoder_config, 16, 4, NORMALIZATION)),
        tmp_path / "timm",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timm"]


def test_timm_names_its_own_sizes():
    assert timm_architecture(768, 12, 12) == "vit_base_patch16_224"
    assert timm_architecture(384, 12, 6) == "vit_small_patch16_224"
    # Other sizes use the generic entry point; the saved arguments set every dimension.
    assert timm_architecture(128, 4, 4) == "vit_base_patch16_224"


@pytest.mark.slow
def test_the_vit_b16_encoder_loads_in_timm_and_gives_its_features(tmp_path):
    """The GPU recipe's size (conf/vit_b16): ViT-B/16 at 224 px, 3 channels."""
    overrides = yaml.safe_load((ROOT / "conf" / "vit_b16" / "parameters.yml").read_text())
    encoder_config = EncoderConfig(**overrides["encoder"])
    size, patch = overrides["masking"]["image_size"], overrides["masking"]["patch_size"]
    torch.manual_seed(0)
    encoder = perturbed(build_encoder(encoder_config, size, patch, 3), seed=1)
    normalization = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    checkpoint = encoder_checkpoint(encoder, encoder_config, size, patch, normalization)
    save_timm_folder(timm_encoder(checkpoint), tmp_path)

    model = load_as_a_user_would(tmp_path)
    assert sum(p.numel() for p in model.parameters()) > 85_000_000
    images = NormalizedImages(uint8_images(2, size, 3), normalization)
    expected = encoder_features(encoder, images, pooling="last", batch_size=2)
    with torch.no_grad():
        exported = model(images[np.arange(2)]).numpy()
    np.testing.assert_allclose(exported, expected, atol=1e-4)
