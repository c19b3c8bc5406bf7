"""The 8-bit LR file a user stores: a lossless RGB PNG whose text chunks say how to upscale it.

An LR alone does not know the HR size when the scale did not divide it (the HR was padded before downscaling), so
`save_lr_png` records it, with the scale and model, in PNG ``tEXt`` chunks (keys ``irrm_jax:hr_size`` as
``"<height>x<width>"``, ``irrm_jax:scale``, ``irrm_jax:model``). `read_lr_png` returns them; an LR without them
(any other PNG) has ``hr_size`` None and upscales to ``scale x`` its size.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from irrm_jax.images import ImageDecodeError, read_image

HR_SIZE_KEY = "irrm_jax:hr_size"
SCALE_KEY = "irrm_jax:scale"
MODEL_KEY = "irrm_jax:model"


@dataclasses.dataclass(frozen=True)
class LrImage:
    """An LR image read from a file.

    Attributes:
      pixels: uint8 (h, w, 3).
      hr_size: the (height, width) of the HR it came from, or None if the file does not say.
      scale: the scale it was made at, or None.
      model: the name of the model that made it, or None.
    """

    pixels: np.ndarray
    hr_size: tuple[int, int] | None
    scale: int | None
    model: str | None


def save_lr_png(
    path: str | os.PathLike, pixels: np.ndarray, *, hr_size: tuple[int, int], scale: int, model: str
) -> None:
    """Writes an LR as an RGB PNG with its HR size, scale and model in text chunks.

    Raises:
      ValueError: the pixels are not uint8 (h, w, 3), or the path does not end in .png (an LR must be lossless).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"an LR must be uint8 (h, w, 3), got {pixels.dtype} {pixels.shape}.")
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"LR files must be PNG (lossless), got {path}.")
    info = PngImagePlugin.PngInfo()
    info.add_text(HR_SIZE_KEY, f"{int(hr_size[0])}x{int(hr_size[1])}")
    info.add_text(SCALE_KEY, str(int(scale)))
    info.add_text(MODEL_KEY, model)
    Image.fromarray(pixels).save(path, format="PNG", pnginfo=info, compress_level=6)


def read_lr_png(path: str | os.PathLike) -> LrImage:
    """Reads an LR image (any image file; PNG text chunks written by `save_lr_png` are honoured).

    Raises:
      ImageDecodeError: the file cannot be read or decoded, or its irrm_jax text chunks are malformed.
    """
    decoded = read_image(path)
    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    hr_size = scale = None
    try:
        if HR_SIZE_KEY in text:
            h, w = (int(v) for v in text[HR_SIZE_KEY].split("x"))
            hr_size = (h, w)
        if SCALE_KEY in text:
            scale = int(text[SCALE_KEY])
    except ValueError as e:
        raise ImageDecodeError(f"{path} has a malformed irrm_jax text chunk: {text}") from e
    return LrImage(decoded.pixels, hr_size, scale, text.get(MODEL_KEY))
