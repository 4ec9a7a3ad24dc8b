"""Decoding one image file: formats, Pillow modes, EXIF orientation and resizing.

Every file is generated in `tmp_path` with Pillow; the expected values follow the
conversion rule in the docstring of `selfsup.data.decode`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from selfsup.data.decode import DecodeSettings, decode_file, fit_to_size, to_channels

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image | np.ndarray, **kwargs) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def decode(path: Path, size: int, channels: int = 3, resize: str = "none") -> np.ndarray:
    array, reason = decode_file(str(path), DecodeSettings(size, channels, resize))
    assert reason == ""
    assert array is not None
    assert array.shape == (size, size, channels)
    assert array.dtype == np.uint8
    return array


def left_right(height: int, width: int, left=RED, right=BLUE) -> np.ndarray:
    """`width` x `height`: the left half one colour, the right half another."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = left
    image[:, width // 2 :] = right
    return image


def sides_and_centre(height: int = 20, width: int = 40, side=RED, centre=GREEN) -> np.ndarray:
    """A landscape image whose centre square (height x height) differs from its sides."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = side
    start = (width - height) // 2
    image[:, start : start + height] = centre
    return image


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("suffix", "kwargs"),
    [
        ("png", {}),
        ("bmp", {}),
        ("tif", {}),
        ("tif", {"compression": "tiff_lzw"}),
        ("webp", {"lossless": True}),
    ],
)
def test_lossless_formats_decode_to_the_exact_pixels(tmp_path, suffix, kwargs):
    pixels = random_rgb(12, 12)
    path = save(tmp_path / f"image.{suffix}", pixels, **kwargs)
    np.testing.assert_array_equal(decode(path, 12), pixels)


@pytest.mark.parametrize(
    ("suffix", "kwargs"), [("jpg", {"quality": 95}), ("webp", {"quality": 90})]
)
def test_lossy_formats_decode_close_to_the_original(tmp_path, suffix, kwargs):
    # Smooth content: lossy codecs keep it within a few grey levels.
    ramp = np.linspace(0, 255, 24, dtype=np.float64)
    pixels = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (24, 1)), np.tile(ramp[:, None], (1, 24))],
        axis=-1,
    ).astype(np.uint8)
    path = save(tmp_path / f"image.{suffix}", pixels, **kwargs)
    decoded = decode(path, 24).astype(np.int16)
    assert np.abs(decoded - pixels).mean() < 4
    assert np.abs(decoded - pixels).max() < 40


def test_multi_frame_tiff_contributes_its_first_frame(tmp_path):
    first, second = random_rgb(8, 8, seed=1), random_rgb(8, 8, seed=2)
    path = tmp_path / "pages.tif"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
    with Image.open(path) as opened:
        assert opened.n_frames == 2
    np.testing.assert_array_equal(decode(path, 8), first)


# --------------------------------------------------------------------------- modes


def test_grayscale_to_rgb_repeats_the_value(tmp_path):
    gray = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7
    path = save(tmp_path / "gray.png", Image.fromarray(gray, mode="L"))
    np.testing.assert_array_equal(decode(path, 6, channels=1)[..., 0], gray)
    np.testing.assert_array_equal(decode(path, 6, channels=3), np.repeat(gray[..., None], 3, -1))


def test_rgb_to_one_channel_is_pillows_luma(tmp_path):
    pixels = random_rgb(6, 6, seed=3)
    path = save(tmp_path / "colour.png", pixels)
    expected = np.asarray(Image.fromarray(pixels).convert("L"))
    np.testing.assert_array_equal(decode(path, 6, channels=1)[..., 0], expected)
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(decode(path, 6, channels=1)[..., 0], luma, atol=1)
    np.testing.assert_array_equal(decode(path, 6, channels=3), pixels)


def test_sixteen_bit_grayscale_maps_65535_to_255(tmp_path):
    k = np.array([[0, 1, 2, 100], [128, 200, 254, 255], [3, 50, 77, 250], [9, 10, 11, 12]])
    path = tmp_path / "deep.png"
    Image.fromarray((k * 257).astype(np.uint16)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
    decoded = decode(path, 4, channels=1)[..., 0]
    np.testing.assert_array_equal(decoded, k)  # 257 * k -> k, 65535 -> 255
    np.testing.assert_array_equal(decode(path, 4, channels=3), np.repeat(decoded[..., None], 3, -1))


def test_sixteen_bit_tiff_maps_like_png(tmp_path):
    values = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 17) * 257
    path = tmp_path / "deep.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(decode(path, 4, channels=1)[..., 0], values // 257)


def test_rgba_is_composited_over_black(tmp_path):
    rgba = np.array(
        [
            [[10, 200, 30, 0], [10, 200, 30, 255]],
            [[200, 100, 50, 128], [255, 255, 255, 0]],
        ],
        dtype=np.uint8,
    )
    path = save(tmp_path / "alpha.png", Image.fromarray(rgba, mode="RGBA"))
    decoded = decode(path, 2)
    np.testing.assert_array_equal(decoded[0, 0], [0, 0, 0])  # fully transparent: black
    np.testing.assert_array_equal(decoded[1, 1], [0, 0, 0])  # even when it stores white
    np.testing.assert_array_equal(decoded[0, 1], [10, 200, 30])  # opaque: its colour
    np.testing.assert_allclose(decoded[1, 0], [100, 50, 25], atol=1)  # alpha 128: ~half
    gray = decode(path, 2, channels=1)[..., 0]
    expected = np.asarray(Image.fromarray(decoded).convert("L"))
    np.testing.assert_array_equal(gray, expected)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_transparent_colour_key_in_rgb_and_gray_becomes_black(tmp_path, mode):
    pixels = np.full((2, 2, 3), 120, dtype=np.uint8)
    pixels[0, 0] = (10, 200, 30)
    image = Image.fromarray(pixels).convert(mode)
    key = image.getpixel((0, 0))
    path = save(tmp_path / f"key_{mode}.png", image, transparency=key)
    decoded = decode(path, 2)
    np.testing.assert_array_equal(decoded[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(decoded[1, 1], np.asarray(image.convert("RGB"))[1, 1])


def test_gray_with_alpha_is_composited_over_black(tmp_path):
    la = np.array([[[200, 0], [200, 255]], [[200, 128], [90, 255]]], dtype=np.uint8)
    path = save(tmp_path / "la.png", Image.fromarray(la, mode="LA"))
    decoded = decode(path, 2, channels=1)[..., 0]
    np.testing.assert_array_equal(decoded[0], [0, 200])
    assert decoded[1, 1] == 90
    assert abs(int(decoded[1, 0]) - 100) <= 1
    np.testing.assert_array_equal(decode(path, 2, channels=3), np.repeat(decoded[..., None], 3, -1))


def palette_image() -> Image.Image:
    indices = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 2]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([9, 9, 9, 250, 20, 10, 30, 60, 240] + [0] * (3 * 253))
    return image


def test_palette_without_transparency_is_its_colours(tmp_path):
    path = save(tmp_path / "palette.png", palette_image())
    with Image.open(path) as opened:
        assert opened.mode == "P"
        assert "transparency" not in opened.info
    decoded = decode(path, 3)
    colours = {0: [9, 9, 9], 1: [250, 20, 10], 2: [30, 60, 240]}
    np.testing.assert_array_equal(decoded[0], [colours[0], colours[1], colours[2]])
    np.testing.assert_array_equal(decoded[2], [colours[1], colours[1], colours[2]])
    expected = np.asarray(palette_image().convert("RGB").convert("L"))
    np.testing.assert_array_equal(decode(path, 3, channels=1)[..., 0], expected)


def test_palette_transparent_colour_becomes_black(tmp_path):
    path = save(tmp_path / "palette.png", palette_image(), transparency=1)
    with Image.open(path) as opened:
        assert opened.mode == "P"
        assert "transparency" in opened.info
    decoded = decode(path, 3)
    np.testing.assert_array_equal(decoded[0], [[9, 9, 9], [0, 0, 0], [30, 60, 240]])
    np.testing.assert_array_equal(decoded[2], [[0, 0, 0], [0, 0, 0], [30, 60, 240]])


def test_gif_transparency_becomes_black(tmp_path):
    path = save(tmp_path / "palette.gif", palette_image(), transparency=2)
    decoded = decode(path, 3)
    np.testing.assert_array_equal(decoded[0], [[9, 9, 9], [250, 20, 10], [0, 0, 0]])


def test_cmyk_to_rgb_is_pillows_conversion(tmp_path):
    cmyk = np.random.default_rng(4).integers(0, 256, (6, 6, 4), dtype=np.uint8)
    path = save(tmp_path / "print.tif", Image.fromarray(cmyk, mode="CMYK"))
    with Image.open(path) as opened:
        assert opened.mode == "CMYK"
        expected_rgb = np.asarray(opened.convert("RGB"))
        expected_l = np.asarray(opened.convert("RGB").convert("L"))
    np.testing.assert_array_equal(decode(path, 6), expected_rgb)
    np.testing.assert_array_equal(decode(path, 6, channels=1)[..., 0], expected_l)


def test_bilevel_becomes_0_and_255(tmp_path):
    bits = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 1]], dtype=bool)
    path = save(tmp_path / "bits.png", Image.fromarray(bits))
    with Image.open(path) as opened:
        assert opened.mode == "1"
    expected = np.where(bits, 255, 0).astype(np.uint8)
    np.testing.assert_array_equal(decode(path, 4, channels=1)[..., 0], expected)
    np.testing.assert_array_equal(decode(path, 4), np.repeat(expected[..., None], 3, -1))


def test_float_grayscale_is_clipped_to_0_255(tmp_path):
    values = np.array([[-20.0, 0.4], [100.6, 1000.0]], dtype=np.float32)
    path = save(tmp_path / "float.tif", Image.fromarray(values, mode="F"))
    np.testing.assert_array_equal(decode(path, 2, channels=1)[..., 0], [[0, 0], [101, 255]])


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"])
@pytest.mark.parametrize("channels", [1, 3])
def test_to_channels_gives_l_or_rgb_for_every_mode(mode, channels):
    image = Image.new(mode, (3, 3))
    converted = to_channels(image, channels)
    assert converted.mode == ("L" if channels == 1 else "RGB")
    assert converted.size == (3, 3)


# --------------------------------------------------------------------------- EXIF


def save_with_orientation(path: Path, pixels: np.ndarray, orientation: int, **kwargs) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(path, pixels, exif=exif, **kwargs)


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(6, RED, BLUE), (8, BLUE, RED)],  # 6: rotate 90 clockwise to view; 8: counter-clockwise
)
def test_exif_orientation_is_applied_to_png(tmp_path, orientation, top, bottom):
    # Stored 40 wide x 20 high, red left half, blue right half; viewed 20 wide x 40 high.
    path = save_with_orientation(tmp_path / "photo.png", left_right(20, 40), orientation)
    decoded = decode(path, 20)  # the centre 20x20 of the 20x40 (w x h) view
    np.testing.assert_array_equal(decoded[:10], np.broadcast_to(top, (10, 20, 3)))
    np.testing.assert_array_equal(decoded[10:], np.broadcast_to(bottom, (10, 20, 3)))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_of_a_jpeg_matches_what_a_viewer_shows(tmp_path, orientation):
    path = save_with_orientation(
        tmp_path / "photo.jpg", left_right(20, 40), orientation, quality=95
    )
    with Image.open(path) as opened:
        assert opened.size == (40, 20)
        viewed = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    assert viewed.shape == (40, 20, 3)
    decoded = decode(path, 20)
    np.testing.assert_array_equal(decoded, viewed[10:30])
    top, bottom = (RED, BLUE) if orientation == 6 else (BLUE, RED)
    assert np.abs(decoded[:8].astype(int) - top).max() < 12
    assert np.abs(decoded[12:].astype(int) - bottom).max() < 12


def test_exif_orientation_is_applied_before_the_resize(tmp_path):
    path = save_with_orientation(tmp_path / "photo.png", left_right(20, 40), 6)
    decoded = decode(path, 10, resize="stretch")
    # Viewed portrait (red on top): stretched to 10x10 the top rows are red.
    assert (decoded[:4, :, 0] > 200).all()
    assert (decoded[:4, :, 2] < 50).all()
    assert (decoded[-4:, :, 2] > 200).all()


# --------------------------------------------------------------------------- resizing


def test_shorter_side_crop_keeps_the_centre(tmp_path):
    path = save(tmp_path / "wide.png", sides_and_centre())
    decoded = decode(path, 10, resize="shorter_side_crop")
    # Scaled to 20x10 and cropped to the middle 10 columns: the green centre square.
    np.testing.assert_array_equal(decoded[:, 1:-1], np.broadcast_to(GREEN, (10, 8, 3)))
    assert (decoded[..., 1] > decoded[..., 0]).all()
    np.testing.assert_array_equal(decode(path, 20, resize="shorter_side_crop"), decode(path, 20))


def test_stretch_keeps_the_whole_content(tmp_path):
    path = save(tmp_path / "wide.png", sides_and_centre())
    decoded = decode(path, 10, resize="stretch")
    np.testing.assert_array_equal(decoded[:, 0], np.broadcast_to(RED, (10, 3)))  # left side
    np.testing.assert_array_equal(decoded[:, -1], np.broadcast_to(RED, (10, 3)))  # right side
    np.testing.assert_array_equal(decoded[:, 4:6], np.broadcast_to(GREEN, (10, 2, 3)))


def test_resize_none_crops_the_centre_without_resampling(tmp_path):
    pixels = random_rgb(24, 31, seed=5)  # 31 wide, 24 high
    path = save(tmp_path / "large.png", pixels)
    np.testing.assert_array_equal(decode(path, 12), pixels[6:18, 9:21])


@pytest.mark.parametrize(("width", "height"), [(8, 20), (20, 8), (8, 8)])
def test_resize_none_rejects_a_too_small_image(tmp_path, width, height):
    path = save(tmp_path / "small.png", random_rgb(height, width))
    array, reason = decode_file(str(path), DecodeSettings(12, 3, "none"))
    assert array is None
    assert f"{width}x{height}" in reason
    assert "size 12" in reason
    assert "resize" in reason


@pytest.mark.parametrize("resize", ["shorter_side_crop", "stretch"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_input_size_comes_out_square(tmp_path, resize, channels):
    for index, (height, width) in enumerate([(6, 6), (20, 60), (45, 15), (33, 33), (7, 50)]):
        path = save(tmp_path / f"{index}.png", random_rgb(height, width, seed=index))
        decode(path, 16, channels=channels, resize=resize)


def test_fit_to_size_upscales_small_images_when_resizing():
    small = Image.fromarray(random_rgb(4, 6))
    for resize in ("shorter_side_crop", "stretch"):
        fitted, reason = fit_to_size(small, DecodeSettings(16, 3, resize))
        assert reason == ""
        assert fitted.size == (16, 16)


def test_large_jpeg_decoded_at_reduced_scale_still_fills_the_size(tmp_path):
    # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale but never below the size.
    path = save(tmp_path / "big.jpg", sides_and_centre(height=160, width=320), quality=95)
    decoded = decode(path, 16, resize="shorter_side_crop")
    assert np.abs(decoded[:, 2:-2].astype(int) - GREEN).max() < 12


# --------------------------------------------------------------------------- rejects


def test_decode_file_reasons_for_unusable_files(tmp_path):
    settings = DecodeSettings(8, 3, "shorter_side_crop")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    png = save(tmp_path / "full.png", random_rgb(30, 30))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    jpeg = save(tmp_path / "full.jpg", random_rgb(30, 30), quality=90)
    truncated_jpeg = tmp_path / "truncated.jpg"
    truncated_jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())

    assert decode_file(str(empty), settings) == (None, "empty file (0 bytes)")
    assert decode_file(str(text), settings) == (None, "not an image Pillow can read")
    assert decode_file(str(noise), settings) == (None, "not an image Pillow can read")
    for path in (truncated, truncated_jpeg):
        array, reason = decode_file(str(path), settings)
        assert array is None
        assert reason.startswith("truncated or corrupt: ")


def test_images_over_max_pixels_are_rejected_before_decoding(tmp_path):
    path = save(tmp_path / "big.png", np.zeros((40, 50, 3), dtype=np.uint8))
    array, reason = decode_file(str(path), DecodeSettings(8, 3, "stretch", max_pixels=1999))
    assert array is None
    assert "50x40" in reason and "max_pixels=1,999" in reason
    assert "ingestion.options.max_pixels" in reason
    array, reason = decode_file(str(path), DecodeSettings(8, 3, "stretch", max_pixels=2000))
    assert reason == "" and array.shape == (8, 8, 3)


def test_a_jpeg_counts_the_pixels_of_its_reduced_decode(tmp_path):
    """JPEG decodes at 1/8 scale when the target is small: 400x400 is read as 50x50."""
    path = save(tmp_path / "photo.jpg", random_rgb(400, 400))
    array, reason = decode_file(str(path), DecodeSettings(32, 3, "shorter_side_crop", 2500))
    assert reason == "" and array.shape == (32, 32, 3)


MEASURE_DECODE = """
import resource, sys
from selfsup.data.decode import DecodeSettings, decode_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
array, reason = decode_file(sys.argv[1], DecodeSettings(32, 3, "shorter_side_crop"))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after - before, reason)
"""


def test_a_decompression_bomb_under_pillows_limit_costs_no_memory(tmp_path):
    """A 13000x13000 RGBA PNG (169 megapixels, under Pillow's 179 MP guard) compresses to
    under 1 MB and would take 676 MB decoded; it is rejected unread, and the decoding
    process's peak memory grows by less than 20 MB."""
    path = tmp_path / "bomb.png"
    Image.new("RGBA", (13000, 13000)).save(path)
    assert path.stat().st_size < 1_000_000
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_DECODE, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    grown_kib, reason = done.stdout.strip().split(" ", 1)
    assert "169.0 megapixels" in reason
    assert int(grown_kib) < 20 * 1024
