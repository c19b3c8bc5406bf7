"""Tests for irrm_jax.images: decoding every kind of image file, bad input, and mod-cropping."""

import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from irrm_jax import images


def _rng(seed=0):
    return np.random.default_rng(seed)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _filter_rows(raw: np.ndarray, bpp: int) -> bytes:
    """PNG-filters each row of ``raw`` (H, row bytes), cycling through all five filter types."""
    raw = raw.astype(np.int32)
    out = []
    for y, row in enumerate(raw):
        prior = raw[y - 1] if y else np.zeros_like(row)
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        kind = y % 5
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prior
        elif kind == 3:
            pred = (left + prior) // 2
        else:  # Paeth
            p = left + prior - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        out.append(bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def _png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (written by hand: Pillow cannot write 16-bit colour PNGs)."""
    h, w = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = np.frombuffer(values.astype(">u2").tobytes(), np.uint8).reshape(h, w * channels * 2)
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(_filter_rows(raw, channels * 2)))
        + _png_chunk(b"IEND", b"")
    )


def _save(array, path, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def _expected_8bit(values16):
    return np.round(values16.astype(np.float64) / 257).astype(np.uint8)


# ----------------------------------------------------------------------------- good files


def test_rgb_png_is_read_exactly(tmp_path):
    pixels = _rng().integers(0, 256, (7, 9, 3), dtype=np.uint8)
    decoded = images.read_image(_save(pixels, tmp_path / "a.png"))
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.pixels.dtype == np.uint8
    assert (decoded.channels_in_source, decoded.source_mode, decoded.bit_depth) == (3, "RGB", 8)


def test_bmp_and_lossless_webp_are_read_exactly_and_jpeg_decodes(tmp_path):
    pixels = _rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.read_image(_save(pixels, tmp_path / "a.bmp")).pixels, pixels)
    webp = _save(pixels, tmp_path / "a.webp", lossless=True, exact=True)
    np.testing.assert_array_equal(images.read_image(webp).pixels, pixels)
    jpeg = images.read_image(_save(pixels, tmp_path / "a.JPG", quality=95))
    assert jpeg.pixels.shape == (6, 5, 3) and jpeg.channels_in_source == 3


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = _rng(2).integers(0, 256, (5, 4), dtype=np.uint8)
    decoded = images.read_image(_save(gray, tmp_path / "g.png"))
    assert decoded.pixels.shape == (5, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded.pixels[..., c], gray)
    assert decoded.channels_in_source == 1


def test_rgba_png_drops_alpha_with_a_note(tmp_path, caplog):
    rgba = _rng(3).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    path = _save(rgba, tmp_path / "alpha.png")
    with caplog.at_level(logging.INFO, logger="irrm_jax.images"):
        decoded = images.read_image(path)
    np.testing.assert_array_equal(decoded.pixels, rgba[..., :3])
    assert decoded.channels_in_source == 3
    assert "alpha" in caplog.text and str(path) in caplog.text


def test_palette_png_with_transparency(tmp_path, caplog):
    palette_image = Image.fromarray(_rng(4).integers(0, 4, (3, 3), dtype=np.uint8), mode="P")
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    path = tmp_path / "p.png"
    palette_image.save(path, transparency=0)
    with caplog.at_level(logging.INFO, logger="irrm_jax.images"):
        decoded = images.read_image(path)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(palette_image.convert("RGB")))
    assert "alpha" in caplog.text


def test_16bit_rgb_png_is_scaled_by_257_and_rounded(tmp_path):
    values = _rng(5).integers(0, 65536, (11, 13, 3)).astype(np.uint16)
    values[0, :4, 0] = [0, 128, 129, 65280]  # round down, round up, 254 (Pillow alone: 255)
    path = tmp_path / "deep.png"
    path.write_bytes(_png16(values))
    decoded = images.read_image(path)
    expected = _expected_8bit(values)
    np.testing.assert_array_equal(decoded.pixels, expected)
    np.testing.assert_array_equal(decoded.pixels[0, :4, 0], [0, 0, 1, 254])
    assert (decoded.channels_in_source, decoded.bit_depth) == (3, 16)
    # Pillow's own decoding keeps the high byte, which is wrong for many pixels.
    assert np.any(np.asarray(Image.open(path)) != expected)


def test_16bit_gray_png_is_scaled(tmp_path):
    values = _rng(6).integers(0, 65536, (9, 8)).astype(np.uint16)
    path = tmp_path / "deep_gray.png"
    path.write_bytes(_png16(values))
    decoded = images.read_image(path)
    np.testing.assert_array_equal(decoded.pixels, np.repeat(_expected_8bit(values)[..., None], 3, -1))
    assert (decoded.channels_in_source, decoded.bit_depth) == (1, 16)


@pytest.mark.parametrize("channels", [2, 4])
def test_16bit_png_with_alpha_is_scaled_and_alpha_dropped(tmp_path, channels):
    values = _rng(7).integers(0, 65536, (6, 7, channels)).astype(np.uint16)
    path = tmp_path / f"deep_alpha{channels}.png"
    path.write_bytes(_png16(values))
    decoded = images.read_image(path)
    color = values[..., :1].repeat(3, -1) if channels == 2 else values[..., :3]
    np.testing.assert_array_equal(decoded.pixels, _expected_8bit(color))
    assert decoded.channels_in_source == (1 if channels == 2 else 3)


# ----------------------------------------------------------------------------- bad files


def test_truncated_png_is_an_error_naming_the_file(tmp_path):
    pixels = _rng(8).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    data = _save(pixels, tmp_path / "ok.png").read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(images.ImageDecodeError, match="truncated.png"):
        images.read_image(bad)


@pytest.mark.parametrize("content", [b"this is not an image", b""])
def test_garbage_or_empty_file_is_an_error_naming_the_file(tmp_path, content):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(content)
    with pytest.raises(images.ImageDecodeError, match="garbage.png"):
        images.read_image(bad)


def test_unreadable_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(images.ImageDecodeError, match="nothing.png"):
        images.read_image(tmp_path / "nothing.png")


# ----------------------------------------------------------------------------- folders


def test_list_image_files_sorted_images_only(tmp_path):
    pixels = np.zeros((2, 2, 3), np.uint8)
    for name in ["b.png", "a.JPEG", "c.bmp", "d.webp", ".hidden.png"]:
        _save(pixels, tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in images.list_image_files(tmp_path)] == ["a.JPEG", "b.png", "c.bmp", "d.webp"]


def test_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        images.list_image_files(tmp_path / "no_such_folder")


def test_empty_folder_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match="empty_folder.*no image"):
        images.list_image_files(empty)


def test_file_instead_of_folder_is_an_error(tmp_path):
    path = _save(np.zeros((2, 2, 3), np.uint8), tmp_path / "x.png")
    with pytest.raises(NotADirectoryError, match="x.png"):
        images.list_image_files(path)


# ----------------------------------------------------------------------------- arrays


def test_mod_crop_keeps_the_top_left_corner():
    image = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    cropped = images.mod_crop(image, 4)
    assert cropped.shape == (4, 8, 3)
    np.testing.assert_array_equal(cropped, image[:4, :8])
    assert images.mod_crop(image, 1).shape == image.shape
    with pytest.raises(ValueError, match="scale"):
        images.mod_crop(image, 0)
    with pytest.raises(ValueError, match="smaller"):
        images.mod_crop(image, 8)


def test_as_rgb_uint8():
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(images.as_rgb_uint8(gray)[..., 2], gray)
    np.testing.assert_array_equal(images.as_rgb_uint8(gray[..., None])[..., 0], gray)
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(images.as_rgb_uint8(rgba), rgba[..., :3])
    with pytest.raises(images.ImageDecodeError, match="dtype"):
        images.as_rgb_uint8(gray.astype(np.float32), name="f")
    with pytest.raises(images.ImageDecodeError, match="shape"):
        images.as_rgb_uint8(np.zeros((2, 3, 5), np.uint8))
