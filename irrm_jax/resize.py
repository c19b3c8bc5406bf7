"""MATLAB ``imresize``-compatible bicubic resizing (numpy for evaluation, JAX for training).

MATLAB's default ``imresize(img, scale)`` (method ``'bicubic'``) is the reference for the
bicubic LR images of every super-resolution / rescaling benchmark. Its conventions:

* the cubic convolution kernel with ``a = -0.5`` (Keys), support ``[-2, 2]``;
* antialiasing when shrinking: for ``scale < 1`` the kernel is stretched to
  ``h(x) = scale * cubic(scale * x)`` (support ``[-2 / scale, 2 / scale]``);
* output pixel ``i`` (1-based) samples the input at ``u = i / scale + 0.5 * (1 - 1 / scale)``;
  the weights of each output pixel are normalised to sum to one;
* borders are handled by symmetric extension (the edge pixel repeated: ``... 2 1 | 1 2 3 ...``);
* output size ``ceil(in_size * scale)``;
* separable: rows and columns are resized one after the other (the dimension with the smaller
  scale first); for ``uint8`` images MATLAB rounds to ``uint8`` after *each* pass.

:func:`imresize` works on floats in float64 and does not round; :func:`imresize_uint8` reproduces
MATLAB's ``uint8`` behaviour exactly (clip and round half away from zero after each pass).
:func:`bicubic_downscale` is the jittable JAX version for integer downscaling factors, used on
NHWC batches inside the training step; it equals :func:`imresize` with ``scale = 1 / factor``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# Tolerance for ``ceil(size * scale)``: ``size * (1 / 3)`` may land a few ulps above an integer.
_SIZE_EPS = 1e-9
# MATLAB resizes the dimension with the smallest scale first (a stable sort); with one scalar
# scale for both axes that is rows (axis 0), then columns (axis 1).
_AXIS_ORDER = (0, 1)


def cubic_kernel(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``).

    Args:
        x: distances, any shape.

    Returns:
        Kernel values (float64), zero for ``|x| >= 2``.
    """
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def output_size(in_size: int, scale: float) -> int:
    """MATLAB's output length ``ceil(in_size * scale)`` (robust to float round-off)."""
    return int(math.ceil(in_size * scale - _SIZE_EPS))


def contributions(in_size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel weights and (0-based, border-mirrored) input indices along one axis.

    Args:
        in_size: input length along the axis (>= 1).
        scale: resize factor (> 0); below 1 the kernel is widened by ``1 / scale``.

    Returns:
        ``(weights, indices)``, both of shape ``(output_size(in_size, scale), taps)``:
        output pixel ``i`` is ``sum_k weights[i, k] * input[indices[i, k]]``.

    Raises:
        ValueError: if ``in_size < 1`` or ``scale <= 0``.
    """
    if in_size < 1:
        raise ValueError(f"in_size must be >= 1, got {in_size}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    out_size = output_size(in_size, scale)
    kernel_scale = min(scale, 1.0)
    kernel_width = 4.0 / kernel_scale
    # Sampling positions in 1-based input coordinates, as in MATLAB.
    u = np.arange(1, out_size + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx1 = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    weights = kernel_scale * cubic_kernel(kernel_scale * (u[:, None] - idx1))
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric extension: ..., 2, 1 | 1, 2, ..., n | n, n-1, ... (periodic with period 2n).
    mirror = np.concatenate([np.arange(in_size), np.arange(in_size - 1, -1, -1)])
    indices = mirror[np.mod(idx1.astype(np.int64) - 1, 2 * in_size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _resize_axis(image: np.ndarray, axis: int, scale: float) -> np.ndarray:
    weights, indices = contributions(image.shape[axis], scale)
    moved = np.moveaxis(image, axis, 0)
    column = (-1,) + (1,) * (moved.ndim - 1)
    # One gather and multiply-add per tap: O(taps) work per output, no dense matrix.
    out = weights[:, 0].reshape(column) * moved[indices[:, 0]]
    for k in range(1, weights.shape[1]):
        out += weights[:, k].reshape(column) * moved[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def _check_image(image: np.ndarray) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be HxW or HxWxC, got shape {image.shape}")


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiased) in float64, without rounding.

    Callers that want MATLAB's ``uint8`` output should use :func:`imresize_uint8` on ``uint8``
    images (MATLAB then rounds after each of the two passes, which this function does not).

    Args:
        image: HxW or HxWxC array (any real dtype; computed in float64).
        scale: resize factor (> 0), the same for both spatial axes.

    Returns:
        float64 array of shape ``(ceil(H * scale), ceil(W * scale)[, C])``.

    Raises:
        ValueError: for an image that is not HxW or HxWxC, or a non-positive scale.
    """
    image = np.asarray(image)
    _check_image(image)
    out = image.astype(np.float64)
    for axis in _AXIS_ORDER:
        out = _resize_axis(out, axis, scale)
    return out


def _round_uint8(x: np.ndarray) -> np.ndarray:
    # MATLAB's double -> uint8 conversion: saturate, then round half away from zero.
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)


def imresize_uint8(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` on a ``uint8`` image, bit-exact conventions.

    Each of the two separable passes is computed in float64 and converted back to ``uint8``
    (clipped to [0, 255], rounded half away from zero), exactly as MATLAB does for ``uint8``
    input.

    Args:
        image: uint8 HxW or HxWxC array.
        scale: resize factor (> 0).

    Returns:
        uint8 array of shape ``(ceil(H * scale), ceil(W * scale)[, C])``.

    Raises:
        ValueError: if ``image`` is not uint8 or not HxW / HxWxC, or ``scale <= 0``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"imresize_uint8 needs a uint8 image, got dtype {image.dtype}")
    _check_image(image)
    out = image
    for axis in _AXIS_ORDER:
        out = _round_uint8(_resize_axis(out.astype(np.float64), axis, scale))
    return out


def bicubic_roundtrip(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The "Bicubic & Bicubic" baseline: MATLAB-bicubic down by ``scale``, then back up.

    Args:
        hr: uint8 HxW or HxWxC image whose height and width ``scale`` divides (mod-crop first).
        scale: integer factor (>= 1).

    Returns:
        ``(lr, sr)``: uint8 LR of size ``H / scale x W / scale`` and uint8 SR of the HR size.

    Raises:
        ValueError: if ``scale`` does not divide the image size, or as :func:`imresize_uint8`.
    """
    hr = np.asarray(hr)
    if scale < 1 or hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(
            f"scale must be a positive integer dividing H and W; got scale={scale} for "
            f"shape {hr.shape} (mod-crop the image first)"
        )
    lr = imresize_uint8(hr, 1.0 / scale)
    return lr, imresize_uint8(lr, float(scale))


def downscale_kernel(factor: int) -> tuple[np.ndarray, int]:
    """The 1-D antialiased bicubic filter MATLAB applies for an integer downscaling factor.

    For ``scale = 1 / factor`` every output pixel ``j`` uses the same weights on input pixels
    ``j * factor + offset + k`` (before border mirroring), ``k = 0 .. len(weights) - 1``.

    Args:
        factor: integer downscaling factor (>= 1).

    Returns:
        ``(weights, offset)``: float64 weights summing to 1, and the (negative) offset of the
        first tap.

    Raises:
        ValueError: if ``factor`` is not a positive integer.
    """
    if not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    # 0-based centre of output j is j * factor + (factor - 1) / 2; the stretched kernel has
    # support |d| < 2 * factor.
    centre = (factor - 1) / 2.0
    first = math.floor(centre - 2 * factor) + 1
    last = math.ceil(centre + 2 * factor) - 1
    taps = np.arange(first, last + 1, dtype=np.float64)
    weights = cubic_kernel((centre - taps) / factor) / factor
    return weights / weights.sum(), first


def bicubic_downscale(x: jax.Array, scale: int) -> jax.Array:
    """MATLAB-bicubic downscaling of an NHWC batch by an integer factor (jittable, unrounded).

    Equivalent to :func:`imresize` with ``1 / scale`` applied to each image: a symmetric
    border extension followed by two strided depthwise convolutions (one per axis) with the
    fixed antialiased cubic filter. Computed in ``x.dtype`` at full precision (no TF32).

    Args:
        x: float array of shape (N, H, W, C); H and W must be divisible by ``scale``.
        scale: integer downscaling factor (>= 1).

    Returns:
        Array of shape (N, H / scale, W / scale, C) and dtype ``x.dtype``.

    Raises:
        ValueError: for a non-NHWC or non-float input, or H / W not divisible by ``scale``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (4-D), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float array, got dtype {x.dtype}")
    weights, first = downscale_kernel(scale)
    _, height, width, channels = x.shape
    if height % scale or width % scale:
        raise ValueError(f"H and W must be divisible by scale={scale}, got shape {x.shape}")
    if scale == 1:
        return x
    pad_before = -first
    pad_after = first + len(weights) - scale
    x = jnp.pad(
        x,
        ((0, 0), (pad_before, pad_after), (pad_before, pad_after), (0, 0)),
        mode="symmetric",
    )
    taps = jnp.asarray(weights, dtype=x.dtype)
    kernel_h = jnp.tile(taps[:, None, None, None], (1, 1, 1, channels))  # HWIO, depthwise
    kernel_w = kernel_h.reshape(1, -1, 1, channels)
    for kernel, strides in ((kernel_h, (scale, 1)), (kernel_w, (1, scale))):
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=strides,
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
            precision=jax.lax.Precision.HIGHEST,
        )
    return x
