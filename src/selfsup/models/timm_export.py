"""The encoder as a timm model, saved in timm's own local format.

selfsup's encoder is timm's ViT minus the class token, with fixed 2-D sin-cos positions
added to every patch and the features read as the mean of the last block's normed
tokens. timm's `VisionTransformer` computes exactly that with `class_token=False`,
`global_pool="avg"` and `fc_norm=False` once the sin-cos table is loaded as its
`pos_embed`; the blocks share timm's parameter names. timm's `save_for_hf` writes the
folder (`config.json` + `model.safetensors`) that
`timm.create_model("local-dir:<folder>", pretrained=True, num_classes=0)` loads, with the
normalization and input size in its data config, so `timm.data.create_transform`
prepares images as the pipeline did.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import timm
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from selfsup.models.vit import encoder_from_checkpoint

# timm's names for the ViT sizes it defines; any other size is built from the generic
# ViT-B entry point, whose saved arguments replace every dimension.
_TIMM_SIZES = {
    (192, 12, 3): "tiny",
    (384, 12, 6): "small",
    (768, 12, 12): "base",
    (1024, 24, 16): "large",
}


def timm_architecture(embed_dim: int, depth: int, num_heads: int) -> str:
    size = _TIMM_SIZES.get((embed_dim, depth, num_heads), "base")
    return f"vit_{size}_patch16_224"


def timm_encoder(checkpoint: dict, name: str = "selfsup") -> VisionTransformer:
    """The encoder of a selfsup checkpoint (`selfsup.models.vit.encoder_checkpoint`) as
    a headless timm ViT whose output is the mean-pooled features (`features.pooling:
    last`). The checkpoint's normalization and input size go into its pretrained
    config; `name` becomes its tag."""
    encoder = encoder_from_checkpoint(checkpoint)
    config = checkpoint["config"]
    normalization = config["normalization"]
    block = config["encoder"]
    model = timm.create_model(
        timm_architecture(block["embed_dim"], block["depth"], block["num_heads"]),
        pretrained=False,
        num_classes=0,
        img_size=config["image_size"],
        patch_size=config["patch_size"],
        in_chans=config["in_chans"],
        embed_dim=block["embed_dim"],
        depth=block["depth"],
        num_heads=block["num_heads"],
        mlp_ratio=block["mlp_ratio"],
        class_token=False,
        global_pool="avg",
        fc_norm=False,
    )
    weights = {**encoder.state_dict(), "pos_embed": encoder.pos_embed.detach().clone()}
    model.load_state_dict(weights, strict=True)
    channels, size = config["in_chans"], config["image_size"]
    # Replaces the ImageNet entry's config (its tag, licence, crop and statistics).
    model.pretrained_cfg = {
        "architecture": model.pretrained_cfg["architecture"],
        "tag": name,
        "input_size": (channels, size, size),
        "fixed_input_size": True,
        # The pipeline resizes whole images (bilinear, antialiased), no crop.
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(normalization["mean"]),
        "std": tuple(normalization["std"]),
        "num_classes": 0,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }
    return model.eval()


def save_timm_folder(model: VisionTransformer, folder: str | Path) -> None:
    """timm's `save_for_hf` into a fresh folder beside `folder`, then swapped in, so
    a crash never leaves a folder with weights and a config of two different models."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fresh = folder.with_name(f".{folder.name}.tmp")
    stale = folder.with_name(f".{folder.name}.old")
    for leftover in (fresh, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        save_for_hf(model, str(fresh), safe_serialization=True)
        if folder.exists():
            os.replace(folder, stale)
        os.replace(fresh, folder)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def load_timm_folder(folder: str | Path) -> VisionTransformer:
    """The model in an exported folder, as a user would load it."""
    return timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()


def timm_folder_config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
