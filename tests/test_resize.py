"""Tests for the MATLAB-compatible bicubic resize (numpy) and its JAX integer downscaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax.resize import (
    bicubic_downscale,
    bicubic_roundtrip,
    contributions,
    cubic_kernel,
    downscale_kernel,
    imresize,
    imresize_uint8,
    output_size,
)

# Antialiased x2 weights, computed by hand: cubic(d) / 2 at d = 1.75, 1.25, 0.75, 0.25 (and
# mirrored) with cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625, cubic(1.25) = -0.0703125,
# cubic(1.75) = -0.0234375; they already sum to 1.
X2_WEIGHTS = np.array([-3, -9, 29, 111, 111, 29, -9, -3]) / 256.0


def test_cubic_kernel_values():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5, -1.5])
    expected = [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625, -0.0625]
    np.testing.assert_allclose(cubic_kernel(x), expected, atol=1e-15)


def test_downscale_kernel_x2_by_hand():
    weights, offset = downscale_kernel(2)
    assert offset == -3
    np.testing.assert_allclose(weights, X2_WEIGHTS, atol=1e-15)


@pytest.mark.parametrize("factor", [3, 4])
def test_downscale_kernel_matches_formula(factor):
    weights, offset = downscale_kernel(factor)
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    # Output pixel 0 is centred at (factor - 1) / 2 in 0-based input coordinates.
    taps = offset + np.arange(len(weights))
    raw = np.array([cubic_kernel(((factor - 1) / 2 - t) / factor) / factor for t in taps])
    np.testing.assert_allclose(weights, raw / raw.sum(), atol=1e-15)
    assert len(weights) == 4 * factor - (factor % 2)  # taps with |distance| < 2 * factor
    np.testing.assert_allclose(weights, weights[::-1], atol=1e-15)  # symmetric filter
    # An interior output of the full resize uses exactly these weights.
    signal = np.random.default_rng(factor).random(16 * factor)
    out = imresize(signal[:, None], 1.0 / factor)[:, 0]
    j = 8
    expected = weights @ signal[j * factor + offset : j * factor + offset + len(weights)]
    assert out[j] == pytest.approx(expected, abs=1e-13)


def test_contributions_mirror_at_borders():
    weights, indices = contributions(8, 0.5)
    np.testing.assert_allclose(weights[0], X2_WEIGHTS, atol=1e-15)
    # Taps -3..4 with symmetric extension (edge repeated): -3 -> 2, -2 -> 1, -1 -> 0.
    np.testing.assert_array_equal(indices[0], [2, 1, 0, 0, 1, 2, 3, 4])
    # Last output: taps 3..10, 8 -> 7, 9 -> 6, 10 -> 5.
    np.testing.assert_array_equal(indices[-1], [3, 4, 5, 6, 7, 7, 6, 5])


def test_symmetric_border_by_hand():
    signal = np.arange(8.0) ** 2
    padded = np.pad(signal, 3, mode="symmetric")
    expected = [X2_WEIGHTS @ padded[2 * j : 2 * j + 8] for j in range(4)]
    np.testing.assert_allclose(imresize(signal[:, None], 0.5)[:, 0], expected, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "scale", "expected"),
    [
        ((321, 481), 0.5, (161, 241)),
        ((9, 10), 1 / 3, (3, 4)),
        ((10, 12, 3), 0.25, (3, 3, 3)),
        ((5, 4), 2.5, (13, 10)),
        ((7, 3, 1), 4.0, (28, 12, 1)),
    ],
)
def test_output_sizes(shape, scale, expected):
    assert imresize(np.zeros(shape), scale).shape == expected
    assert output_size(shape[0], scale) == expected[0]


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 0.7, 1.5, 2.0, 4.0])
def test_constant_image_stays_constant(scale):
    image = np.full((12, 16, 3), 0.3)
    np.testing.assert_allclose(imresize(image, scale), 0.3, atol=1e-12)
    image_u8 = np.full((12, 16), 77, np.uint8)
    out = imresize_uint8(image_u8, scale)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, 77)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 1.5, 2.0, 3.0, 4.0])
def test_linear_ramp_is_reproduced_away_from_borders(scale):
    # The cubic kernel reproduces linear functions; output pixel i samples input coordinate
    # (i + 0.5) / scale - 0.5 (0-based). Borders are excluded (the mirror breaks linearity).
    n = 48
    ramp = 2.0 * np.arange(n) + 1.0
    image = ramp[:, None] + 0.5 * ramp[None, :]
    out = imresize(image, scale)
    coords = (np.arange(out.shape[0]) + 0.5) / scale - 0.5
    expected = (2.0 * coords + 1.0)[:, None] + 0.5 * (2.0 * coords + 1.0)[None, :]
    margin = int(np.ceil(3.0 * max(1.0, 1.0 / scale)))
    inner = (coords >= margin) & (coords <= n - 1 - margin)
    assert inner.sum() >= 4
    np.testing.assert_allclose(out[np.ix_(inner, inner)], expected[np.ix_(inner, inner)], atol=1e-9)


def test_upscale_x3_keeps_the_input_samples():
    # For scale 3, output 3j + 1 sits exactly on input j, where cubic(0) = 1, cubic(+-1) = 0.
    image = np.random.default_rng(0).random((7, 9, 2))
    out = imresize(image, 3.0)
    np.testing.assert_allclose(out[1::3, 1::3], image, atol=1e-12)


def test_upscale_then_downscale_is_close_to_identity():
    # Smooth content survives x2 up then x2 down almost unchanged (interior pixels).
    y, x = np.mgrid[0:32, 0:32] / 32.0
    image = np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
    back = imresize(imresize(image, 2.0), 0.5)
    np.testing.assert_allclose(back[4:-4, 4:-4], image[4:-4, 4:-4], atol=2e-2)


def test_uint8_rounds_half_away_from_zero_and_clips():
    # Both rows [0 0 0 1 1 1 1 1]: output 1 is (111 + 29 - 9 - 3) / 256 = 0.5 exactly; MATLAB
    # rounds it to 1 (numpy's half-to-even would give 0).
    image = np.array([[0, 0, 0, 1, 1, 1, 1, 1]] * 2, np.uint8)
    assert imresize(image, 0.5)[0, 1] == 0.5
    assert imresize_uint8(image, 0.5)[0, 1] == 1
    # A hard edge overshoots in float; uint8 output saturates.
    edge = np.zeros((2, 16), np.uint8)
    edge[:, 8:] = 255
    up = imresize(edge, 2.0)
    assert up.max() > 255 and up.min() < 0
    up_u8 = imresize_uint8(edge, 2.0)
    np.testing.assert_array_equal(up_u8, np.floor(np.clip(up, 0, 255) + 0.5).astype(np.uint8))


def test_uint8_rounds_after_each_pass():
    # MATLAB converts the first (row) pass back to uint8 before the column pass.
    image = np.random.default_rng(1).integers(0, 256, (16, 12, 3)).astype(np.uint8)
    w0, i0 = contributions(16, 0.5)
    rows = (w0[:, :, None, None] * image[i0].astype(np.float64)).sum(axis=1)
    rows = np.floor(np.clip(rows, 0, 255) + 0.5)
    w1, i1 = contributions(12, 0.5)
    cols = (w1[None, :, :, None] * rows[:, i1]).sum(axis=2)
    expected = np.floor(np.clip(cols, 0, 255) + 0.5).astype(np.uint8)
    out = imresize_uint8(image, 0.5)
    np.testing.assert_array_equal(out, expected)
    # Rounding only once at the end differs somewhere: the test above can tell them apart.
    once = np.floor(np.clip(imresize(image, 0.5), 0, 255) + 0.5).astype(np.uint8)
    assert np.any(out != once)


def test_bicubic_roundtrip_shapes_and_errors():
    hr = np.random.default_rng(2).integers(0, 256, (16, 24, 3)).astype(np.uint8)
    lr, sr = bicubic_roundtrip(hr, 4)
    assert lr.shape == (4, 6, 3) and sr.shape == hr.shape
    assert lr.dtype == sr.dtype == np.uint8
    with pytest.raises(ValueError, match="mod-crop"):
        bicubic_roundtrip(hr[:15], 4)
    with pytest.raises(ValueError, match="uint8"):
        imresize_uint8(hr.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="HxW"):
        imresize(np.zeros((2, 2, 2, 2)), 0.5)


@pytest.mark.parametrize(
    ("shape", "scale"),
    [((2, 16, 24, 3), 2), ((1, 32, 16, 3), 4), ((2, 9, 12, 2), 3), ((1, 4, 8, 3), 4)],
)
def test_jax_downscale_matches_numpy(shape, scale):
    x = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    expected = np.stack([imresize(img, 1.0 / scale) for img in x])
    out = jax.jit(bicubic_downscale, static_argnums=1)(jnp.asarray(x), scale)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)


def test_jax_downscale_errors_and_identity():
    x = jnp.zeros((1, 8, 8, 3))
    assert bicubic_downscale(x, 1) is x
    with pytest.raises(ValueError, match="divisible"):
        bicubic_downscale(jnp.zeros((1, 6, 8, 3)), 4)
    with pytest.raises(ValueError, match="NHWC"):
        bicubic_downscale(jnp.zeros((8, 8, 3)), 2)
    with pytest.raises(ValueError, match="float"):
        bicubic_downscale(jnp.zeros((1, 8, 8, 3), jnp.int32), 2)
    with pytest.raises(ValueError, match="positive integer"):
        bicubic_downscale(x, 0)
