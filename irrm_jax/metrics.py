"""Image-quality metrics with the IRN / MATLAB evaluation conventions (spec sections 3.8, 3.9).

Conventions, named in every function:

* Network outputs are converted to ``uint8`` before scoring (:func:`to_uint8`: clip to [0, 1],
  times 255, round half to even, as IRN's ``tensor2img`` does with numpy's ``round``).
* ``*_y`` metrics use the BT.601 luma of the ``uint8`` RGB image,
  ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1]; Y stays a float in
  [0, 255] (it is *not* rounded again). Single-channel images (HxW or HxWx1, e.g. Set14
  ``bridge``) are scored on their own channel instead.
* ``crop`` pixels are shaved from every side before scoring (IRN: ``crop = scale``).
* PSNR is ``10 log10(255^2 / MSE)``; SSIM is the MATLAB ``ssim_index`` of Wang et al.: 11x11
  Gaussian window with sigma 1.5, 'valid' filtering, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2,
  mean of the SSIM map.
* A dataset score is the mean of the per-image values (:class:`MeanAccumulator`).

Everything runs in numpy (float64) on the host.
"""

import math
from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0
_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8: clip, multiply by 255, round half to even.

    Rounding half to even is what IRN's ``tensor2img`` (``(x * 255.0).round()`` in numpy) does;
    it differs from MATLAB's half-away-from-zero only on exact ``.5`` values.

    Args:
        x: float array (numpy or JAX) with values nominally in [0, 1].

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: if ``x`` is not a floating-point array.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"to_uint8 expects a float image in [0, 1], got dtype {x.dtype}")
    return np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``16 + 65.481 R + 128.553 G + 24.966 B`` (R, G, B in [0, 1]) as float64.

    Args:
        img: HxWx3 RGB image, either uint8 (0..255) or float (0..1).

    Returns:
        HxW float64 array in [16, 235] (for inputs in range), not rounded.

    Raises:
        ValueError: if ``img`` is not HxWx3.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {img.shape}")
    rgb = img.astype(np.float64)
    if img.dtype == np.uint8:
        rgb = rgb / 255.0
    return rgb @ _Y_WEIGHTS + _Y_OFFSET


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` over all elements.

    Args:
        a: array (any shape).
        b: array of the same shape.
        data_range: peak value (255 for 8-bit images).

    Returns:
        PSNR in dB; ``inf`` for identical inputs.

    Raises:
        ValueError: if the shapes differ.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
    r = np.arange(_SSIM_SIZE, dtype=np.float64) - (_SSIM_SIZE - 1) / 2.0
    g = np.exp(-(r**2) / (2.0 * _SSIM_SIGMA**2))
    # MATLAB's fspecial normalises the 2-D window; its outer-product form is the same.
    return g / g.sum()


def _filter_valid(maps: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a stack (..., H, W) with the 1-D window ``g``."""
    rows = sliding_window_view(maps, g.size, axis=-2) @ g
    return sliding_window_view(rows, g.size, axis=-1) @ g


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """MATLAB-compatible SSIM (Wang et al. ``ssim_index``) of two single-channel images.

    11x11 Gaussian window (sigma 1.5), 'valid' region (5 pixels lost on each side),
    C1 = (0.01 * data_range)^2, C2 = (0.03 * data_range)^2; returns the mean of the SSIM map.

    Args:
        a: HxW float image (values in [0, data_range]).
        b: HxW image of the same shape.
        data_range: dynamic range of the pixel values.

    Returns:
        Mean SSIM.

    Raises:
        ValueError: for non-2-D inputs, different shapes, or images smaller than 11x11.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"ssim needs two HxW images of equal shape, got {a.shape} and {b.shape}")
    if min(a.shape) < _SSIM_SIZE:
        raise ValueError(f"ssim needs images of at least 11x11 pixels, got {a.shape}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a, mu_b, aa, bb, ab = _filter_valid(np.stack([a, b, a * a, b * b, a * b]), _gaussian_window())
    var_a = aa - mu_a * mu_a
    var_b = bb - mu_b * mu_b
    cov = ab - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def _check_pair(pred: np.ndarray, ref: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    for name, img in (("pred", pred), ("ref", ref)):
        if img.dtype != np.uint8:
            raise ValueError(
                f"{name} must be a uint8 image, got dtype {img.dtype}; convert float images "
                "in [0, 1] with irrm_jax.metrics.to_uint8 first"
            )
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if pred.ndim not in (2, 3) or (pred.ndim == 3 and pred.shape[-1] not in (1, 3)):
        raise ValueError(f"images must be HxW, HxWx1 or HxWx3, got shape {pred.shape}")
    if crop < 0 or 2 * crop >= min(pred.shape[:2]):
        raise ValueError(f"crop must be in [0, min(H, W) / 2), got {crop} for shape {pred.shape}")
    if crop:
        pred, ref = pred[crop:-crop, crop:-crop], ref[crop:-crop, crop:-crop]
    return pred, ref


def _luma(img: np.ndarray) -> np.ndarray:
    """Y of an RGB uint8 image; a single-channel image is its own channel (as float64)."""
    if img.ndim == 3 and img.shape[-1] == 3:
        return rgb_to_y(img)
    return img.reshape(img.shape[:2]).astype(np.float64)


def psnr_y(pred: np.ndarray, ref: np.ndarray, crop: int) -> float:
    """PSNR on the BT.601 Y channel of two uint8 images after shaving ``crop`` pixels per side.

    Args:
        pred: uint8 HxWx3 RGB (or HxW / HxWx1 single-channel, scored as is).
        ref: uint8 image of the same shape.
        crop: pixels removed from each border (IRN uses the scale factor).

    Returns:
        PSNR in dB (``inf`` for identical crops).

    Raises:
        ValueError: for non-uint8 inputs, different or unsupported shapes, or a crop too large.
    """
    pred, ref = _check_pair(pred, ref, crop)
    return psnr(_luma(pred), _luma(ref))


def ssim_y(pred: np.ndarray, ref: np.ndarray, crop: int) -> float:
    """MATLAB SSIM on the BT.601 Y channel of two uint8 images after shaving ``crop`` pixels.

    Args:
        pred: uint8 HxWx3 RGB (or HxW / HxWx1 single-channel, scored as is).
        ref: uint8 image of the same shape.
        crop: pixels removed from each border (IRN uses the scale factor).

    Returns:
        Mean SSIM.

    Raises:
        ValueError: for non-uint8 inputs, different or unsupported shapes, a crop too large, or
            a cropped image smaller than 11x11.
    """
    pred, ref = _check_pair(pred, ref, crop)
    return ssim(_luma(pred), _luma(ref))


def psnr_rgb(pred: np.ndarray, ref: np.ndarray, crop: int) -> float:
    """PSNR over all channels of two uint8 images (MSE of every R, G, B value) after the crop.

    Args:
        pred: uint8 HxWx3 (or single-channel) image.
        ref: uint8 image of the same shape.
        crop: pixels removed from each border.

    Returns:
        PSNR in dB (``inf`` for identical crops).

    Raises:
        ValueError: for non-uint8 inputs, different or unsupported shapes, or a crop too large.
    """
    pred, ref = _check_pair(pred, ref, crop)
    return psnr(pred, ref)


class MeanAccumulator:
    """Exact dataset means of per-image metrics: a running sum and count per metric name.

    Example:
        >>> acc = MeanAccumulator()
        >>> acc.add({"psnr_y": 30.0, "ssim_y": 0.9})
        >>> acc.add({"psnr_y": 32.0, "ssim_y": 0.8})
        >>> acc.means()["psnr_y"]
        31.0
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        """Adds one image's metric values (any subset of names)."""
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def counts(self) -> dict[str, int]:
        """Number of values added per metric."""
        return dict(self._counts)

    def means(self) -> dict[str, float]:
        """Mean of the per-image values of every metric added so far."""
        return {name: self._sums[name] / self._counts[name] for name in self._sums}
