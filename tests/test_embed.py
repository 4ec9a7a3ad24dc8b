"""`selfsup embed`: features of a folder of new images, batch by batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from selfsup.commands import embed_command
from selfsup.data.decode import DecodeSettings, decode_file
from selfsup.data.preprocessing import to_model_input
from selfsup.datasets import EncoderDataset
from selfsup.embed import EmbedInputError, _batches, embed_folder
from selfsup.evaluation import encoder_features
from selfsup.models.vit import (
    EncoderConfig,
    build_encoder,
    encoder_checkpoint,
    encoder_from_checkpoint,
)

NORMALIZATION = {"mean": [0.45, 0.4, 0.35], "std": [0.25, 0.2, 0.3]}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A method's model folder as `kedro run` leaves it: data/06_models/<method>/encoder.pt."""
    config = EncoderConfig(embed_dim=16, depth=2, num_heads=2)
    torch.manual_seed(0)
    encoder = build_encoder(config, 16, 4, 3)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    folder = tmp_path / "06_models" / "ijepa"
    EncoderDataset(str(folder / "encoder.pt")).save(
        encoder_checkpoint(encoder, config, 16, 4, NORMALIZATION)
    )
    return folder


def make_images(root: Path, count: int = 7) -> list[str]:
    """PNGs and JPEGs of other sizes in nested folders, a truncated file and a hidden
    one; returns the usable files' paths relative to `root`, in sorted order."""
    rng = np.random.default_rng(0)
    usable = []
    for i in range(count):
        relative = f"{'deep/er/' if i % 3 == 0 else ''}{i}.{'jpg' if i % 2 else 'png'}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / relative)
        usable.append(relative)
    whole = (root / "1.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    (root / ".hidden.jpg").write_bytes(whole)
    return sorted(usable)


def expected_features(
    model_folder: Path, root: Path, files: list[str], pooling="last", grid_cells=4
):
    """The encoder's features of the files, decoded as the image_folder source does."""
    checkpoint = EncoderDataset(str(model_folder / "encoder.pt")).load()
    settings = DecodeSettings(16, 3, "shorter_side_crop")
    pixels = np.stack([decode_file(str(root / f), settings)[0] for f in files])
    encoder = encoder_from_checkpoint(checkpoint)
    return encoder_features(
        encoder, to_model_input(pixels, NORMALIZATION), pooling, grid_cells=grid_cells
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_embeds_every_usable_image_and_lists_the_rest(model_folder, tmp_path, workers):
    root = tmp_path / "new images"
    usable = make_images(root)
    out = tmp_path / "out" / "features.npy"
    summary = embed_folder(model_folder, root, out, batch_size=3, workers=workers, progress=False)

    features = np.load(out)
    paths = pd.read_csv(out.with_suffix(".csv"))
    assert summary.embedded == len(usable) == len(features) == len(paths)
    assert features.dtype == np.float32 and features.shape[1] == 16
    assert list(paths["path"]) == [(root / f).as_posix() for f in usable]
    np.testing.assert_allclose(features, expected_features(model_folder, root, usable), atol=1e-5)
    rejected = pd.read_csv(out.with_suffix(".rejected.csv"))
    assert list(rejected["path"]) == ["broken.jpg"]
    assert "truncated or corrupt" in rejected["reason"][0]
    assert summary.rejected == 1
    # Nothing but the three outputs is left beside them (no partial file).
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "features.csv",
        "features.npy",
        "features.rejected.csv",
    ]


def test_a_folder_without_rejections_keeps_its_rows_and_the_pooling_is_selectable(
    model_folder, tmp_path
):
    root = tmp_path / "images"
    usable = make_images(root, count=4)
    (root / "broken.jpg").unlink()
    out = tmp_path / "f.npy"
    embed_folder(
        model_folder / "encoder.pt",
        root,
        out,
        pooling="grid",
        grid_cells=2,
        workers=1,
        progress=False,
    )
    expected = expected_features(model_folder, root, usable, pooling="grid", grid_cells=2)
    assert expected.shape == (4, (1 + 2 * 2) * 16)  # the mean, then a 2x2 grid of means
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    assert pd.read_csv(out.with_suffix(".rejected.csv")).empty


def test_batches_come_in_order_whatever_the_worker_count():
    paths = [str(i) for i in range(11)]
    for workers in (1, 2):
        batches = list(_batches(paths, int, 4, workers))
        assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"out": "features.parquet"}, "--out"),
        ({"encoder": "missing"}, "--encoder"),
        ({"images": "no such folder"}, "does not exist"),
        ({"pooling": "grid", "grid_cells": 5}, "--grid-cells=5"),
        ({"pooling": "last4"}, "--pooling='last4' needs 4 blocks"),
        ({"device": "cuda"} if not torch.cuda.is_available() else {"out": "x.csv"}, "--"),
    ],
)
def test_bad_arguments_are_refused_before_any_file_is_written(
    model_folder, tmp_path, change, named
):
    root = tmp_path / "images"
    make_images(root, count=2)
    arguments = {"encoder": model_folder, "images": root, "out": tmp_path / "f.npy"}
    for key in ("encoder", "images", "out"):
        if key in change:
            arguments[key] = tmp_path / change.pop(key)
    with pytest.raises((EmbedInputError, FileNotFoundError, ValueError, RuntimeError)) as error:
        embed_folder(**arguments, **change, progress=False)
    assert named in str(error.value)
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


def test_an_encoder_from_before_normalization_was_recorded_is_refused(model_folder, tmp_path):
    checkpoint = torch.load(model_folder / "encoder.pt", weights_only=True)
    del checkpoint["config"]["normalization"]
    torch.save(checkpoint, model_folder / "encoder.pt")
    root = tmp_path / "images"
    make_images(root, count=2)
    with pytest.raises(EmbedInputError, match="rerun the pretraining pipeline"):
        embed_folder(model_folder, root, tmp_path / "f.npy", progress=False)


def test_a_folder_where_nothing_decodes_is_an_error_that_points_to_the_reasons(
    model_folder, tmp_path
):
    root = tmp_path / "images"
    root.mkdir()
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "f.npy"
    with pytest.raises(EmbedInputError, match="none of its 1 files"):
        embed_folder(model_folder, root, out, workers=1, progress=False)
    assert not out.exists()
    assert "not an image" in out.with_suffix(".rejected.csv").read_text()


def test_the_command_line_embeds_and_reports(model_folder, tmp_path, capsys):
    root = tmp_path / "images"
    usable = make_images(root, count=3)
    out = tmp_path / "f.npy"
    arguments = ["--encoder", str(model_folder), "--images", str(root), "--out", str(out)]
    assert embed_command([*arguments, "--workers", "1"]) == 0
    assert f"embedded {len(usable)} images" in capsys.readouterr().err
    assert embed_command([*arguments, "--out", str(tmp_path / "f.parquet")]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        embed_command([*arguments, "--batch-size", "0"])


def test_selfsup_embed_is_a_command_of_the_installed_package():
    result = subprocess.run(
        [sys.executable, "-m", "selfsup", "embed", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: selfsup embed")
    # Kedro is not imported, so its logging set-up lines do not precede the output.
    assert "logging" not in result.stdout + result.stderr
