"""The training objective against hand-computed values (spec 3.6): sums not means, STE, Charbonnier eps, weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax.losses import (
    LossConfig,
    charbonnier_loss,
    latent_loss,
    lr_fit_loss,
    quantize_ste,
    rescaling_loss,
)
from irrm_jax.models import build_model
from irrm_jax.resize import imresize


def test_quantize_ste_forward_values():
    x = jnp.array([-0.2, 0.0, 0.1234, 0.5, 0.999, 1.7])
    expected = np.array([0, 0, round(0.1234 * 255), round(0.5 * 255), 255, 255]) / 255
    np.testing.assert_allclose(quantize_ste(x), expected, atol=1e-7)


def test_quantize_ste_gradient_is_identity_even_where_clipped():
    x = jnp.array([-0.2, 0.3, 0.5001, 1.7])
    w = jnp.array([1.0, -2.0, 3.0, 0.5])
    grad = jax.grad(lambda v: jnp.sum(w * quantize_ste(v)))(x)
    np.testing.assert_array_equal(grad, w)


def test_lr_fit_is_per_sample_sum_then_batch_mean():
    lr = jnp.array([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    ref = jnp.array([[[[0.0, 0.0]]], [[[3.0, 0.0]]]])
    # sample 0: 1 + 4 = 5; sample 1: 9; mean = 7
    assert float(lr_fit_loss(lr, ref)) == pytest.approx(7.0)


def test_latent_loss_is_sum_over_batch_size():
    z = jnp.arange(12.0).reshape(2, 1, 2, 3)
    assert float(latent_loss(z)) == pytest.approx(sum(v * v for v in range(12)) / 2)


def test_charbonnier_eps_is_inside_the_root():
    x = jnp.zeros((2, 2, 2, 3))
    # 12 elements per sample, each sqrt(0 + 1e-6) = 1e-3 (eps outside the root would give 12e-6)
    assert float(charbonnier_loss(x, x, 1e-6)) == pytest.approx(12e-3, rel=1e-5)
    y = x.at[0, 0, 0, 0].set(0.5)
    assert float(charbonnier_loss(x, y, 1e-6)) == pytest.approx(12e-3 + (np.sqrt(0.25 + 1e-6) - 1e-3) / 2, rel=1e-5)


@pytest.mark.parametrize("fn", [lr_fit_loss, charbonnier_loss])
def test_pixel_losses_scale_with_patch_size_not_batch_size(fn):
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.uniform(size=(2, 3, 3, 3)), jnp.float32) for _ in range(2))
    call = (lambda x, y: fn(x, y, 1e-6)) if fn is charbonnier_loss else fn
    base = float(call(a, b))
    tiled = float(call(jnp.tile(a, (1, 2, 1, 1)), jnp.tile(b, (1, 2, 1, 1))))
    repeated = float(call(jnp.concatenate([a, a]), jnp.concatenate([b, b])))
    assert tiled == pytest.approx(2 * base, rel=1e-5)
    assert repeated == pytest.approx(base, rel=1e-5)


def test_loss_config_rejects_negative_weights():
    with pytest.raises(ValueError, match="lambda_rec"):
        LossConfig(lambda_fit=4.0, lambda_rec=-1.0)


def _haar_bands(x: np.ndarray) -> list[np.ndarray]:
    """The four Haar bands (LL, then details), written from the 2x2 formulas of spec 2.1."""
    p00, p01, p10, p11 = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    return [
        (p00 + p01 + p10 + p11) / 4,
        (p00 - p01 + p10 - p11) / 4,
        (p00 + p01 - p10 - p11) / 4,
        (p00 - p01 - p10 + p11) / 4,
    ]


def _haar_inverse(ll: np.ndarray, b1: np.ndarray, b2: np.ndarray, b3: np.ndarray) -> np.ndarray:
    n, h, w, c = ll.shape
    x = np.empty((n, 2 * h, 2 * w, c))
    x[:, 0::2, 0::2] = ll + b1 + b2 + b3
    x[:, 0::2, 1::2] = ll - b1 + b2 - b3
    x[:, 1::2, 0::2] = ll + b1 - b2 - b3
    x[:, 1::2, 1::2] = ll - b1 - b2 + b3
    return x


def test_rescaling_loss_matches_hand_computation_at_initialisation():
    # At initialisation every coupling is the identity (zero-initialised output convolutions), so the x2
    # model is one Haar level: LR = 2x2 block means, z = the detail bands, and the inverse is the Haar inverse.
    model = build_model("irrm_s", 2, blocks_per_level=(1,), nf=8)
    hr = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    params = model.init(jax.random.key(0), jnp.asarray(hr))["params"]
    config = LossConfig(lambda_fit=2.0, lambda_rec=3.0, lambda_ce=5.0, charbonnier_eps=1e-6, gaussian_scale=0.5)
    key = jax.random.key(42)
    loss, terms = rescaling_loss(model, params, jnp.asarray(hr), key, config)

    x = hr.astype(np.float64)
    ll, b1, b2, b3 = _haar_bands(x)
    lr, _ = model.apply({"params": params}, jnp.asarray(hr))
    np.testing.assert_allclose(lr, ll, atol=1e-6)  # the premise: identity couplings
    lr_reference = np.stack([imresize(img, 0.5) for img in x])
    z = np.concatenate([b1, b2, b3], axis=-1)
    z_new = 0.5 * np.asarray(jax.random.normal(key, z.shape, jnp.float32), np.float64)
    lr_q = np.round(np.clip(ll, 0, 1) * 255) / 255
    x_rec = _haar_inverse(lr_q, z_new[..., 0:3], z_new[..., 3:6], z_new[..., 6:9])
    expected = {
        "loss_fit": 2.0 * np.mean(np.sum((ll - lr_reference) ** 2, axis=(1, 2, 3))),
        "loss_rec": 3.0 * np.mean(np.sum(np.sqrt((x - x_rec) ** 2 + 1e-6), axis=(1, 2, 3))),
        "loss_ce": 5.0 * np.sum(z**2) / 2,
    }
    expected["loss"] = sum(expected.values())
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=2e-5), name
    assert float(loss) == pytest.approx(expected["loss"], rel=2e-5)


def test_reconstruction_starts_from_the_quantised_lr():
    # Constant 2x2 blocks with values (k + 0.4) / 255 and z' = 0 (gaussian_scale 0): at initialisation the
    # reconstruction is the quantised LR upsampled, off by exactly 0.4 / 255 at every pixel.
    model = build_model("irrm_s", 2, blocks_per_level=(1,), nf=8)
    k = np.random.default_rng(2).integers(0, 255, size=(2, 4, 4, 3))
    hr = jnp.asarray(np.repeat(np.repeat((k + 0.4) / 255, 2, axis=1), 2, axis=2), jnp.float32)
    params = model.init(jax.random.key(0), hr)["params"]
    config = LossConfig(lambda_fit=4.0, lambda_rec=3.0, gaussian_scale=0.0)
    _, terms = rescaling_loss(model, params, hr, jax.random.key(0), config)
    per_pixel = np.sqrt((0.4 / 255) ** 2 + 1e-6)  # without quantisation it would be sqrt(1e-6)
    assert float(terms["loss_rec"]) == pytest.approx(3.0 * 8 * 8 * 3 * per_pixel, rel=1e-4)
    assert float(terms["loss_ce"]) == pytest.approx(0.0, abs=1e-9)  # flat blocks: no detail bands


def test_rescaling_loss_draws_z_from_the_key():
    model = build_model("irrm_s", 2, blocks_per_level=(1,), nf=8)
    hr = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 8, 8, 3)), jnp.float32)
    params = model.init(jax.random.key(0), hr)["params"]
    config = LossConfig(lambda_fit=4.0)
    rec = [float(rescaling_loss(model, params, hr, jax.random.key(k), config)[1]["loss_rec"]) for k in (1, 1, 2)]
    assert rec[0] == rec[1] != rec[2]
