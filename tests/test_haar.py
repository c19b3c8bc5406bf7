"""Haar transform: explicit 2x2 formulas, band-major order, exact inverse, jit equivalence, bad sizes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax.haar import (
    haar_forward,
    haar_forward_levels,
    haar_inverse,
    haar_inverse_levels,
    official_haar_weights,
)


def explicit_haar(x: np.ndarray) -> np.ndarray:
    """The spec's table, pixel by pixel: band k of channel c at output channel k*C + c."""
    n, h, w, c = x.shape
    out = np.zeros((n, h // 2, w // 2, 4 * c))
    for i in range(h // 2):
        for j in range(w // 2):
            p00, p01 = x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1]
            p10, p11 = x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]
            bands = [p00 + p01 + p10 + p11, p00 - p01 + p10 - p11, p00 + p01 - p10 - p11, p00 - p01 - p10 + p11]
            for k, band in enumerate(bands):
                out[:, i, j, k * c : (k + 1) * c] = band / 4
    return out


@pytest.fixture
def image():
    return np.random.default_rng(0).uniform(size=(2, 8, 6, 3))


def test_forward_matches_explicit_formulas(image):
    np.testing.assert_allclose(haar_forward(jnp.asarray(image, jnp.float32)), explicit_haar(image), atol=1e-6)


def test_ll_band_is_the_2x2_mean(image):
    ll = np.asarray(haar_forward(jnp.asarray(image, jnp.float32)))[..., :3]
    np.testing.assert_allclose(ll, image.reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4)), atol=1e-6)


def test_two_levels_channel_order(image):
    x = np.random.default_rng(1).uniform(size=(1, 8, 8, 3))
    two = np.asarray(haar_forward_levels(jnp.asarray(x, jnp.float32), 2))
    expected = explicit_haar(explicit_haar(x))  # channel k2*12 + k1*3 + c
    np.testing.assert_allclose(two, expected, atol=1e-6)
    np.testing.assert_allclose(two[..., :3], x.reshape(1, 2, 4, 2, 4, 3).mean(axis=(2, 4))[:, :, :, :], atol=1e-6)


def test_inverse_is_exact():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 5)))
        np.testing.assert_allclose(haar_inverse(haar_forward(x)), x, atol=1e-15)
        np.testing.assert_allclose(haar_inverse_levels(haar_forward_levels(x, 3), 3), x, atol=1e-14)
        y = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 4, 8)))
        np.testing.assert_allclose(haar_forward(haar_inverse(y)), y, atol=1e-15)


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_eager_and_shapes(self):
        x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 8, 12, 3)), jnp.float32)
        y = self.variant(haar_forward)(x)
        chex.assert_shape(y, (2, 4, 6, 12))
        back = self.variant(haar_inverse)(y)
        chex.assert_shape(back, x.shape)
        chex.assert_trees_all_close(y, haar_forward(x), atol=0)
        chex.assert_trees_all_close(back, x, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 7, 8, 3), (1, 8, 5, 3)])
def test_odd_sizes_raise(shape):
    with pytest.raises(ValueError, match="multiples of 2"):
        haar_forward(jnp.zeros(shape))


def test_inverse_needs_four_bands():
    with pytest.raises(ValueError, match="divisible by 4"):
        haar_inverse(jnp.zeros((1, 2, 2, 6)))


def test_official_filter_bank_reproduces_forward():
    """The frozen PyTorch filters (grouped stride-2 conv, out channel 4c+k) give our bands after the reorder."""
    x = np.random.default_rng(5).uniform(size=(1, 4, 4, 2))
    w = official_haar_weights(2)  # (8, 1, 2, 2)
    assert w.shape == (8, 1, 2, 2)
    blocks = x.reshape(1, 2, 2, 2, 2, 2)  # n, i, di, j, dj, c
    torch_out = np.stack(
        [np.einsum("nidjec,de->nijc", blocks, w[4 * c + k, 0])[..., c] / 4 for c in range(2) for k in range(4)],
        axis=-1,
    )  # channel 4c + k
    band_major = torch_out.reshape(1, 2, 2, 2, 4).transpose(0, 1, 2, 4, 3).reshape(1, 2, 2, 8)
    np.testing.assert_allclose(haar_forward(jnp.asarray(x, jnp.float32)), band_major, atol=1e-6)
