"""Decode one image file into a uint8 (size, size, channels) array, or say why not.

Runs in the decoding worker processes, so it imports only numpy and Pillow.

Conversion rule (documented in conf/base/parameters_ingestion.yml):
- EXIF orientation is applied first, so a photo is stored the way a viewer shows it.
- 16-bit and 32-bit integer grayscale (I;16, I) maps 0..65535 to 0..255 (v / 257);
  float grayscale (F) is clipped to 0..255. Bilevel (1) becomes 0/255.
- Transparency (RGBA, LA, PA, or a transparent colour key in P, RGB or L) is composited over black:
  a fully transparent pixel is black, whatever colour it stores.
- CMYK, YCbCr, LAB and HSV are converted to RGB by Pillow (no ICC colour management).
- Then 3 channels: grayscale is repeated into R, G and B; 1 channel: RGB becomes
  luma L = 0.299 R + 0.587 G + 0.114 B (Pillow's ITU-R 601-2 convert("L")).
- Multi-frame files (TIFF pages, animated WebP) contribute their first frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("shorter_side_crop", "stretch", "none")


@dataclass(frozen=True)
class DecodeSettings:
    size: int
    channels: int  # 1 or 3
    resize: str  # one of RESIZE_MODES
    # Larger images are rejected before their pixels are decoded: memory per decoding
    # worker stays bounded (a small compressed file can hold a huge image).
    max_pixels: int = 64_000_000


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(values, 0.0, 255.0)
    else:
        scaled = np.clip(values.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _over_black(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), mode="RGB")


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> L (channels 1) or RGB (channels 3), by the rule above."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _high_bit_depth_to_l(image)
    elif mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Also a transparent colour key in P, RGB or L images (PNG tRNS, GIF).
        image = _over_black(image)
    elif mode not in ("L", "RGB"):
        image = image.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV, RGBX
    if channels == 1:
        return image if image.mode == "L" else image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_to_size(image: Image.Image, settings: DecodeSettings) -> tuple[Image.Image | None, str]:
    """The image at (size, size), or None and the reason it cannot be."""
    size = settings.size
    width, height = image.size
    if settings.resize == "stretch":
        return image.resize((size, size), Image.Resampling.BILINEAR), ""
    if settings.resize == "shorter_side_crop":
        return ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR), ""
    if width < size or height < size:
        return None, (
            f"image is {width}x{height}, smaller than size {size} and resizing is off "
            "(ingestion.options.resize: none); set resize to shorter_side_crop or stretch"
        )
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size)), ""


def _pixels_of(opened: Image.Image, settings: DecodeSettings) -> tuple[np.ndarray | None, str]:
    """Decode an opened file at (size, size, channels), or say why not."""
    if settings.resize != "none":
        # JPEG can decode at 1/2, 1/4 or 1/8 scale, never below the requested size: a
        # large photo then costs a fraction of a full decode.
        opened.draft(None, (settings.size, settings.size))
    width, height = opened.size  # after draft: what decoding will allocate
    if width * height > settings.max_pixels:
        return None, (
            f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels), more than "
            f"max_pixels={settings.max_pixels:,}; not decoded (raise "
            "ingestion.options.max_pixels to read it)"
        )
    opened.load()
    image = to_channels(ImageOps.exif_transpose(opened), settings.channels)
    fitted, reason = fit_to_size(image, settings)
    if fitted is None:
        return None, reason
    array = np.asarray(fitted, dtype=np.uint8)
    return array.reshape(settings.size, settings.size, settings.channels), ""


def decode_file(path: str, settings: DecodeSettings) -> tuple[np.ndarray | None, str]:
    """(array, "") for a usable image, (None, reason) for a file to reject."""
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as opened:
            return _pixels_of(opened, settings)
    except Image.UnidentifiedImageError:
        return None, "not an image Pillow can read"
    except Image.DecompressionBombError as error:
        return None, f"too many pixels (Pillow's decompression-bomb guard): {error}"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return None, f"truncated or corrupt: {error}"
