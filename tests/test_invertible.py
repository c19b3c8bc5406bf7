"""Table-driven invertibility checks for every invertible layer and every model variant.

Every entry gets random non-zero weights (at initialisation each coupling is the identity, so a round trip there
proves nothing) and must reconstruct its input to 1e-5 in float32 and 1e-12 in float64. Model variants run with
their full architecture except block counts reduced to 2 per level (the depth changes nothing algebraically);
test_full_depth_variant and `irrm_jax.verify` cover full depth.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import models
from irrm_jax.coupling import AdditiveCoupling, AffineCoupling
from irrm_jax.haar import haar_forward_levels
from irrm_jax.models import VARIANTS, HaarLevel, build_model, with_dense_cuda
from irrm_jax.subnets import Conv3x3, DenseBlock, EnhancedBlock
from irrm_jax.verify import random_nonzero_params

dense = functools.partial(DenseBlock, growth=8)
eb = functools.partial(EnhancedBlock, width=8, n_res=2)


def tiny(name, scale, **overrides):
    levels = int(np.log2(scale))
    return functools.partial(build_model, name, scale, blocks_per_level=(2,) * levels, **overrides)


# name -> (module factory taking compute_dtype, input channels, spatial size)
LAYERS = {
    "haar": (lambda dtype: HaarLevel(), 3, 8),
    "affine_dense": (lambda dtype: AffineCoupling(12, functools.partial(dense, dtype=dtype)), 12, 8),
    "affine_eb": (lambda dtype: AffineCoupling(48, functools.partial(eb, dtype=dtype), clamp=1.5), 48, 4),
    "additive_eb": (lambda dtype: AdditiveCoupling(12, functools.partial(eb, dtype=dtype)), 12, 8),
}
MODELS = {f"{name}_x{scale}": (name, scale) for name, scales in VARIANTS.items() for scale in scales}
MODEL_OPTIONS = {
    "irrm_m_x4_upfront": ("irrm_m", 4, dict(haar_mode="upfront")),
    "irrm_m_x4_explicit_skip": ("irrm_m", 4, dict(long_skip="explicit", rdms_per_level=2)),
}


def layer_roundtrip(entry, dtype, seed=0):
    make, channels, size = LAYERS[entry]
    layer = make(jnp.dtype(dtype))
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, size, size, channels)), dtype)
    params = jax.jit(layer.init)(jax.random.key(0), x).get("params", {})
    params = jax.tree.map(lambda a: a.astype(dtype), random_nonzero_params(params, seed + 1))

    @jax.jit
    def roundtrip(params, x):
        y = layer.apply({"params": params}, x)
        return y, layer.apply({"params": params}, y, method=layer.inverse)

    y, back = roundtrip(params, x)
    return x, y, back


def model_roundtrip(make_model, dtype, size, seed=0):
    model = make_model(compute_dtype=jnp.dtype(dtype))
    x = jnp.asarray(np.random.default_rng(seed).uniform(size=(2, size, size, 3)), dtype)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda a: a.astype(dtype), random_nonzero_params(params, seed + 1))

    @jax.jit
    def roundtrip(params, x):
        lr, z = model.apply({"params": params}, x)
        return (lr, z), model.apply({"params": params}, lr, z, method=model.inverse)

    out, back = roundtrip(params, x)
    return x, out, back


def max_err(a, b):
    return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("entry", LAYERS)
def test_layer_roundtrip_float32(entry):
    x, y, back = layer_roundtrip(entry, "float32")
    if y.shape == x.shape:
        assert max_err(x, y) > 1e-2, "the layer must not be the identity, or the check proves nothing"
    assert max_err(back, x) / float(jnp.max(jnp.abs(y))) < 1e-5


@pytest.mark.parametrize("entry", LAYERS)
def test_layer_roundtrip_float64(entry):
    with jax.enable_x64(True):
        x, y, back = layer_roundtrip(entry, "float64")
        assert back.dtype == jnp.float64
        assert max_err(back, x) < 1e-12


def model_cases():
    cases = [pytest.param(tiny(name, scale), scale, id=key) for key, (name, scale) in MODELS.items()]
    cases += [pytest.param(tiny(n, s, **opts), s, id=key) for key, (n, s, opts) in MODEL_OPTIONS.items()]
    return cases


@pytest.mark.parametrize("make_model,scale", model_cases())
def test_model_roundtrip_float32(make_model, scale):
    x, (lr, z), back = model_roundtrip(make_model, "float32", 2 * scale)
    chex.assert_shape([lr, z], [(2, 2, 2, 3), (2, 2, 2, 3 * scale**2 - 3)])
    ll = haar_forward_levels(x, int(np.log2(scale)))[..., :3]
    assert max_err(lr, ll) > 1e-2, "random weights must move the LR away from the Haar LL band"
    assert max_err(back, x) < 1e-5


# float64 on one case per sub-network type and Haar schedule (the algebra is shared by all variants).
@pytest.mark.parametrize(
    "make_model,scale",
    [c for c in model_cases() if c.id in ("irn_x4", "irrm_m_x4_upfront", "irrm_l_x4", "irrm_m_x4_explicit_skip")],
)
def test_model_roundtrip_float64(make_model, scale):
    with jax.enable_x64(True):
        x, _, back = model_roundtrip(make_model, "float64", 2 * scale)
        assert back.dtype == jnp.float64
        assert max_err(back, x) < 1e-12


def test_full_depth_variant():
    x, _, back = model_roundtrip(functools.partial(build_model, "irrm_s", 4), "float32", 16)
    assert max_err(back, x) < 1e-5


def test_bfloat16_subnets_stay_invertible():
    x, (lr, _), back = model_roundtrip(tiny("irn", 4), "float32", 8)
    assert lr.dtype == jnp.float32, "coupling arithmetic stays float32"
    model = tiny("irn", 4)(compute_dtype=jnp.bfloat16)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)), "parameters stay float32"
    params = random_nonzero_params(params, 1)
    lr, z = jax.jit(model.apply)({"params": params}, x)
    back = jax.jit(functools.partial(model.apply, method=model.inverse))({"params": params}, lr, z)
    assert back.dtype == jnp.float32
    assert max_err(back, x) < 1e-2


def test_initial_model_is_plain_haar():
    """Zero-initialised output convs make every coupling the identity: IRN at init is Haar, then Haar."""
    model = build_model("irn", 4, blocks_per_level=(1, 1))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 8, 8, 3)), jnp.float32)
    lr, z = jax.jit(model.apply)(jax.jit(model.init)(jax.random.key(0), x), x)
    out = haar_forward_levels(x, 2)
    np.testing.assert_allclose(jnp.concatenate([lr, z], -1), out, atol=1e-7)


class BrokenCoupling(AffineCoupling):
    """A deliberately wrong inverse: the scale's sign is flipped."""

    def inverse(self, y):
        y1, y2 = y[..., : self.split], y[..., self.split :]
        shift, s = self._shift_and_log_scale(y1)
        x2 = (y2 - shift) * jnp.exp(s)
        return jnp.concatenate([y1 - self.F(x2), x2], axis=-1)


def test_broken_inverse_is_caught(monkeypatch):
    monkeypatch.setattr(models, "AffineCoupling", BrokenCoupling)
    x, _, back = model_roundtrip(tiny("irrm_s", 2), "float32", 4)
    assert max_err(back, x) > 1e-3


class TestJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_eager(self):
        model = tiny("irrm_m", 2)()
        x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 8, 8, 3)), jnp.float32)
        params = random_nonzero_params(model.init(jax.random.key(0), x)["params"], 1)
        lr, z = self.variant(model.apply)({"params": params}, x)
        ref_lr, ref_z = model.apply({"params": params}, x)
        chex.assert_trees_all_close((lr, z), (ref_lr, ref_z), atol=1e-6)
        chex.assert_shape([lr, z], [(1, 4, 4, 3), (1, 4, 4, 9)])


def test_subnet_output_dtypes():
    for block in (DenseBlock(5, growth=4, dtype=jnp.bfloat16), EnhancedBlock(5, width=4, dtype=jnp.bfloat16)):
        out, _ = jax.jit(block.init_with_output)(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
        assert out.dtype == jnp.bfloat16 and out.shape == (1, 4, 4, 5)
        assert not np.any(np.asarray(out, np.float32)), "the last conv starts at zero"


@pytest.mark.parametrize("name", ["irn", "irrm_m"])
def test_speed_options_compute_the_same_function(name):
    """Channel padding and fused G/H change neither parameters nor outputs."""
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)), jnp.float32)
    plain = tiny(name, 4)()
    fast = tiny(name, 4)(channel_multiple=8, fuse_gh=True, dense_outward=name == "irn")
    shapes = jax.eval_shape(plain.init, jax.random.key(0), x)["params"]
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(
        lambda a: a.shape, jax.eval_shape(fast.init, jax.random.key(0), x)["params"]
    )
    params = random_nonzero_params(shapes, 3)
    ref = jax.jit(plain.apply)({"params": params}, x)
    out = jax.jit(fast.apply)({"params": params}, x)
    chex.assert_trees_all_close(out, ref, atol=2e-6)
    back = jax.jit(functools.partial(fast.apply, method=fast.inverse))({"params": params}, *out)
    assert max_err(back, x) < 1e-5
    loss = lambda m: lambda p: sum(jnp.sum(jnp.sin(t)) for t in m.apply({"params": p}, x))  # noqa: E731
    chex.assert_trees_all_close(
        jax.jit(jax.grad(loss(fast)))(params), jax.jit(jax.grad(loss(plain)))(params), atol=1e-5
    )


def conv_inputs(model, x):
    """Input channel counts of every Conv3x3 call in a forward pass."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Conv3x3) and context.method_name == "__call__":
            seen.append(args[0].shape[-1])
        return next_fun(*args, **kwargs)

    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with nn.intercept_methods(record):
        jax.eval_shape(model.apply, variables, x)
    return seen


@pytest.mark.parametrize("name", ["irn", "irrm_s"])
def test_with_dense_cuda_fuses_g_and_h(name):
    model = with_dense_cuda(tiny(name, 2)())
    assert model.dense_cuda and model.fuse_gh, "both sub-networks run G and H as one call of each kernel"


def test_speed_options_are_active():
    """Each option really changes the computation (so the equality test above is not vacuous)."""
    x = jnp.zeros((1, 4, 4, 3))
    plain = conv_inputs(tiny("irn", 2)(), x)
    assert len(plain) == 2 * 15 and any(c % 8 for c in plain)
    padded = conv_inputs(tiny("irn", 2)(channel_multiple=8), x)
    assert len(padded) == 30 and all(c % 8 == 0 for c in padded)
    assert len(conv_inputs(tiny("irn", 2)(fuse_gh=True), x)) == 2 * 10  # G and H run as one batched network
    assert conv_inputs(tiny("irn", 2)(dense_outward=True), x) == []  # DenseBlocks convolve their kernels directly
