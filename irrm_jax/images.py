"""Reading HR image files into validated uint8 RGB arrays, and mod-cropping them.

Every image that enters irrm_jax (dataset preparation, evaluation, tools) is decoded here, so the
rules for unusual files live in one place:

* grayscale (``L``, ``1``, 16-bit ``I;16``) becomes 3 identical channels, and the source is
  flagged with ``channels_in_source == 1`` so metrics can score it on one channel;
* an alpha channel (``RGBA``, ``LA``, palette transparency) is dropped, with a logged note;
* 16-bit PNGs are scaled to 8 bits as ``round(value / 257)`` (Pillow alone keeps only the high
  byte of 16-bit colour PNGs, which is up to one level off);
* a corrupt, truncated or unreadable file raises :class:`ImageDecodeError` naming the file;
* a missing or empty folder raises an error naming the folder.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
"""File name endings (case-insensitive) treated as images by :func:`list_image_files`."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The first eight bytes of every PNG file."""

logger = logging.getLogger(__name__)


class ImageDecodeError(ValueError):
    """An image file is corrupt, truncated, or in a form irrm_jax cannot use."""


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what the file held.

    Attributes:
        pixels: uint8 array of shape (H, W, 3), RGB.
        channels_in_source: 1 if the file was grayscale (the 3 channels are then equal), else 3.
        source_mode: the Pillow mode of the file ('RGB', 'L', 'RGBA', 'I;16', 'P', ...).
        bit_depth: bits per channel in the file (8 or 16).
    """

    pixels: np.ndarray
    channels_in_source: int
    source_mode: str
    bit_depth: int


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Lists the image files (PNG, JPEG, BMP, WebP) directly inside ``folder``, sorted by name.

    Hidden files and other file types are ignored; sub-folders are not searched.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is not a directory.
        ValueError: ``folder`` holds no image file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"Image folder {folder} does not exist.")
    if not folder.is_dir():
        raise NotADirectoryError(f"Image folder {folder} is not a directory.")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise ValueError(f"Image folder {folder} holds no image file (looked for {', '.join(IMAGE_SUFFIXES)}).")
    return files


def read_image(path: str | os.PathLike) -> DecodedImage:
    """Reads and validates one image file.

    Args:
        path: a PNG, JPEG or BMP file (8- or 16-bit, gray, RGB, palette, with or without alpha).

    Returns:
        The decoded image; ``pixels`` is uint8 (H, W, 3).

    Raises:
        ImageDecodeError: the file cannot be read or decoded; the message names it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"Cannot read image file {path}: {e}") from e
    return decode_image_bytes(data, name=str(path))


def decode_image_bytes(data: bytes, *, name: str) -> DecodedImage:
    """Decodes an encoded image (PNG, JPEG, BMP, WebP) held in memory; see :func:`read_image`.

    Args:
        data: the encoded file contents.
        name: how to name the image in messages (usually its path).

    Raises:
        ImageDecodeError: the bytes are not a complete, decodable image.
    """
    if not data:
        raise ImageDecodeError(f"Image file {name} is empty.")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if _png_bit_depth(data) == 16:
                return _decode_png16(im, data, name)
            im.load()
            return _to_rgb8(im, name)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Pillow reports bad headers as UnidentifiedImageError (an OSError), truncated data as
        # OSError and broken PNG chunks as SyntaxError.
        raise ImageDecodeError(f"Cannot decode image file {name}: {e}") from e


def as_rgb_uint8(array: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Checks an already decoded array and returns it as uint8 (H, W, 3).

    Accepts (H, W), (H, W, 1) (made 3-channel), (H, W, 3) and (H, W, 4) (alpha dropped).

    Raises:
        ImageDecodeError: wrong dtype, rank or channel count; the message names the image.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageDecodeError(f"Image {name} has dtype {array.dtype}; expected uint8.")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageDecodeError(
            f"Image {name} has shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."
        )
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crops the bottom rows and right columns so that H and W are multiples of ``scale``.

    This is IRN's ``modcrop`` (spec 3.8): the top-left corner is kept.

    Raises:
        ValueError: ``scale`` is not a positive integer, or the image is smaller than ``scale``.
    """
    if not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}.")
    h, w = image.shape[:2]
    if h < scale or w < scale:
        raise ValueError(f"Image of size {h}x{w} is smaller than the scale {scale}.")
    return image[: h - h % scale, : w - w % scale]


def encode_png(pixels: np.ndarray) -> bytes:
    """Encodes a uint8 (H, W, 3) array as a PNG (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 25 or data[12:16] != b"IHDR":
        return None
    return data[24]


def _to_rgb8(im: Image.Image, name: str) -> DecodedImage:
    """Converts an 8-bit Pillow image of any usual mode to RGB."""
    mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette.mode == "RGBA"
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        logger.info("Image %s has an alpha channel (%s); it is dropped.", name, mode)
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode in ("1", "L"):
        gray = np.asarray(im.convert("L"))
        return DecodedImage(np.repeat(gray[..., None], 3, axis=-1), 1, mode, 8)
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        logger.info("Image %s is in mode %s; it is converted to RGB.", name, mode)
        im = im.convert("RGB")
    if im.mode != "RGB":
        raise ImageDecodeError(f"Image {name} has unsupported mode {mode!r}; expected gray, RGB, palette or RGBA.")
    return DecodedImage(np.array(im, dtype=np.uint8), 3, mode, 8)


def _decode_png16(im: Image.Image, data: bytes, name: str) -> DecodedImage:
    """Decodes a 16-bit PNG exactly and scales it to 8 bits.

    Pillow decodes 16-bit gray PNGs exactly (mode 'I;16'), but colour ones only to their high
    bytes. For those, the PNG is decoded twice with Pillow's raw modes that read the high and
    the low byte of each sample, and the two are joined back into 16-bit values.
    """
    color_type = data[25]
    if color_type == 0:  # gray: Pillow decodes it exactly (mode 'I;16', or 'I' in old versions)
        im.load()
        gray = _scale16(np.asarray(im).astype(np.uint16))
        return DecodedImage(np.repeat(gray[..., None], 3, axis=-1), 1, im.mode, 16)
    pairs = {2: ("RGB;16B", "RGB;16L", "RGB"), 6: ("RGBA;16B", "RGBA;16L", "RGBA")}
    if color_type == 4:  # gray + alpha: 4 bytes a pixel, read verbatim as 8-bit RGBA
        raw = _decode_with_rawmode(data, "RGBA", name).astype(np.uint16)
        gray = _scale16(raw[..., 0] * 256 + raw[..., 1])
        logger.info("Image %s has an alpha channel (LA, 16-bit); it is dropped.", name)
        return DecodedImage(np.repeat(gray[..., None], 3, axis=-1), 1, "LA;16", 16)
    if color_type not in pairs:
        raise ImageDecodeError(f"Image {name} is a 16-bit PNG of unknown colour type {color_type}.")
    high_mode, low_mode, mode = pairs[color_type]
    high = _decode_with_rawmode(data, high_mode, name).astype(np.uint16)
    low = _decode_with_rawmode(data, low_mode, name).astype(np.uint16)
    pixels = _scale16(high * 256 + low)
    if mode == "RGBA":
        logger.info("Image %s has an alpha channel (RGBA, 16-bit); it is dropped.", name)
    return DecodedImage(pixels[..., :3], 3, mode + ";16", 16)


def _decode_with_rawmode(data: bytes, rawmode: str, name: str) -> np.ndarray:
    """Decodes a PNG with Pillow, unpacking its samples with ``rawmode``."""
    with Image.open(io.BytesIO(data)) as im:
        if len(im.tile) != 1 or im.tile[0][0] != "zip":
            raise ImageDecodeError(
                f"Image {name}: cannot decode this 16-bit PNG layout with Pillow {Image.__version__}."
            )
        tile = im.tile[0]
        im.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
        im.load()
        return np.asarray(im)


def _scale16(values: np.ndarray) -> np.ndarray:
    """Maps 16-bit values to 8 bits as round(v / 257) (exact: v / 257 is never k + 1/2)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
