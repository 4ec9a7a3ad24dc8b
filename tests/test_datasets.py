"""The project's two Kedro datasets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from kedro.io import DatasetError

from selfsup.config import EncoderConfig
from selfsup.datasets import EncoderDataset, MarkdownDataset, NumpyDataset, TimmModelDataset
from selfsup.models import build_encoder
from selfsup.models.timm_export import timm_encoder
from selfsup.models.vit import encoder_checkpoint, encoder_from_checkpoint

RGB_NORMALIZATION = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.linspace(-1, 1, 10, dtype=np.float32),
        np.array([[1, 2], [3, 4]], dtype=np.int64),
    ],
)
def test_numpy_dataset_round_trip(tmp_path, array):
    path = tmp_path / "nested" / "dir" / "array.npy"
    dataset = NumpyDataset(str(path))
    assert not dataset.exists()
    dataset.save(array)
    assert dataset.exists()
    loaded = dataset.load()
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)
    assert sorted(p.name for p in path.parent.iterdir()) == ["array.npy"]


def test_numpy_dataset_memory_map_and_overwrite(tmp_path):
    path = tmp_path / "a.npy"
    NumpyDataset(str(path)).save(np.zeros(5))
    NumpyDataset(str(path)).save(np.ones(3))
    loaded = NumpyDataset(str(path), mmap_mode="r").load()
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, np.ones(3))


def test_numpy_dataset_refuses_pickles_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npy"
    dataset = NumpyDataset(str(path))
    dataset.save(np.arange(3))
    with pytest.raises((ValueError, DatasetError)):
        dataset.save(np.array([{"a": 1}], dtype=object))
    np.testing.assert_array_equal(dataset.load(), np.arange(3))


def test_numpy_dataset_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        NumpyDataset(str(tmp_path / "missing.npy")).load()


@pytest.fixture
def encoder_and_config():
    config = EncoderConfig(embed_dim=16, depth=2, num_heads=2)
    torch.manual_seed(0)
    encoder = build_encoder(config, image_size=8, patch_size=2, in_chans=3).eval()
    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return encoder, config


def test_encoder_dataset_round_trip(tmp_path, encoder_and_config):
    encoder, config = encoder_and_config
    path = tmp_path / "models" / "encoder.pt"
    dataset = EncoderDataset(str(path))
    assert not dataset.exists()
    checkpoint = encoder_checkpoint(
        encoder, config, image_size=8, patch_size=2, normalization=RGB_NORMALIZATION
    )
    dataset.save(checkpoint)
    assert dataset.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["encoder.pt"]

    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "config"}
    assert raw["config"] == {
        "encoder": config.model_dump(),
        "image_size": 8,
        "patch_size": 2,
        "in_chans": 3,
        "normalization": RGB_NORMALIZATION,
    }
    loaded = dataset.load()
    assert loaded["state_dict"].keys() == encoder.state_dict().keys()
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded["state_dict"][name], tensor), name

    rebuilt = encoder_from_checkpoint(loaded)
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), encoder(images))
        assert torch.equal(
            rebuilt.forward_layers(images, last=2)[0], encoder.forward_layers(images, last=2)[0]
        )


def test_encoder_dataset_saves_detached_tensors(tmp_path, encoder_and_config):
    encoder, config = encoder_and_config
    checkpoint = encoder_checkpoint(encoder, config, 8, 2, RGB_NORMALIZATION)
    checkpoint["state_dict"] = {
        name: tensor.clone().requires_grad_(tensor.is_floating_point())
        for name, tensor in checkpoint["state_dict"].items()
    }
    dataset = EncoderDataset(str(tmp_path / "encoder.pt"))
    dataset.save(checkpoint)
    assert not any(t.requires_grad for t in dataset.load()["state_dict"].values())


def test_encoder_dataset_rejects_other_keys_and_missing_files(tmp_path):
    dataset = EncoderDataset(str(tmp_path / "encoder.pt"))
    with pytest.raises(DatasetError, match="state_dict"):
        dataset.save({"state_dict": {}})
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="does not exist"):
        dataset.load()


def test_failed_save_leaves_no_temporary_file(tmp_path):
    dataset = NumpyDataset(str(tmp_path / "a.npy"))
    with pytest.raises((ValueError, DatasetError)):
        dataset.save(np.array([{"a": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []


def table_rows(html: str) -> list[list[str]]:
    """Header and body cells of the HTML table in a preview, row by row."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html, flags=re.S)
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S) for row in rows]


def test_numpy_preview_shows_shape_dtype_and_the_first_rows(tmp_path):
    path = tmp_path / "features.npy"
    values = np.arange(7 * 12, dtype=np.float32).reshape(7, 12) / 4
    NumpyDataset(str(path)).save(values)
    preview = NumpyDataset(str(path)).preview(rows=3, values=5)
    assert preview.startswith("<p>shape (7, 12), dtype float32</p>")
    header, *body = table_rows(preview)
    assert header[1:] == ["0", "1", "2", "3", "4", "…"]
    assert len(body) == 3
    shown = np.array([[float(cell) for cell in row[1:6]] for row in body])
    np.testing.assert_allclose(shown, values[:3, :5])
    # Images (N, H, W, C) are shown a flattened row each.
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
    NumpyDataset(str(tmp_path / "images.npy")).save(images)
    preview = NumpyDataset(str(tmp_path / "images.npy")).preview(values=3)
    assert "shape (2, 4, 4, 1), dtype uint8" in preview
    assert table_rows(preview)[2][1:4] == ["16", "17", "18"]


def test_encoder_preview_is_its_configuration_and_size(tmp_path, encoder_and_config):
    encoder, config = encoder_and_config
    path = tmp_path / "encoder.pt"
    EncoderDataset(str(path)).save(encoder_checkpoint(encoder, config, 8, 2, RGB_NORMALIZATION))
    preview = json.loads(EncoderDataset(str(path)).preview())
    assert preview["encoder"] == config.model_dump()
    assert preview["normalization"] == RGB_NORMALIZATION
    assert preview["parameters"] == sum(p.numel() for p in encoder.state_dict().values())


def test_timm_model_dataset_round_trip_and_preview(tmp_path, encoder_and_config):
    encoder, config = encoder_and_config
    model = timm_encoder(encoder_checkpoint(encoder, config, 8, 2, RGB_NORMALIZATION))
    dataset = TimmModelDataset(str(tmp_path / "timm"))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="holds no exported model"):
        dataset.load()
    dataset.save(model)
    assert dataset.exists()
    loaded = dataset.load()
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), encoder(images).mean(dim=1))
    preview = json.loads(dataset.preview())
    assert preview["model_args"]["embed_dim"] == config.embed_dim
    assert preview["pretrained_cfg"]["mean"] == RGB_NORMALIZATION["mean"]


def test_markdown_preview_renders_the_table(tmp_path):
    path = tmp_path / "comparison.md"
    dataset = MarkdownDataset(filepath=str(path))
    dataset.save("# Title\n\n| features | linear |\n|---|---|\n| ijepa | 98.9 |\n\n- a note\n")
    preview = dataset.preview()
    assert "<h1>Title</h1>" in preview
    assert "<td>ijepa</td>" in preview and "<td>98.9</td>" in preview
    assert "<li>a note</li>" in preview
