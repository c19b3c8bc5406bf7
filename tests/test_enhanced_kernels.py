"""IRRM's Enhanced Block on the flat-layout kernels (Pallas' interpreter on CPU): the same function and gradients as
XLA's, and the same invertible models (its bfloat16 and float64 tests are the DenseBlock's, in test_dense_kernels)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import dense_kernels as dk
from irrm_jax import enhanced_kernels as ek
from irrm_jax.models import build_model
from irrm_jax.subnets import EnhancedBlock
from irrm_jax.verify import random_nonzero_params
from tests.test_dense_kernels import assert_runs_per_device, assert_same_sub_network

RNG = np.random.default_rng(0)


def normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("c_in, features, n_res", [(3, 9, 1), (20, 3, 2)])
def test_value_and_gradients_match_xla(c_in, features, n_res):
    xla = EnhancedBlock(features, width=16, n_res=n_res)
    pallas = EnhancedBlock(features, width=16, n_res=n_res, pallas=True)
    assert_same_sub_network(xla, pallas, normal(2, 5, 7, c_in), features)


def test_width_not_a_power_of_two_is_padded_for_pallas():
    """Width 24 runs as 32 channels (Triton's blocks; zero kernels, LeakyReLU(0) = 0): the same function."""
    x = normal(1, 4, 6, 3)
    params = random_nonzero_params(jax.eval_shape(EnhancedBlock(9, width=24).init, jax.random.key(0), x)["params"], 2)
    out = EnhancedBlock(9, width=24, pallas=True).apply({"params": params}, x)
    chex.assert_trees_all_close(out, EnhancedBlock(9, width=24).apply({"params": params}, x), atol=1e-5)


def test_irrm_with_kernel_blocks_and_fused_g_h_is_the_same_invertible_model():
    """IRRM-S x2 (two couplings) with its Enhanced Blocks on the kernels and G and H vmapped together: the same
    values, inverse and gradients, in four kernel calls for F and four for G and H together, no XLA convolution."""
    x = jnp.asarray(RNG.uniform(size=(2, 8, 8, 3)), jnp.float32)
    plain = build_model("irrm_s", 2, blocks_per_level=(1,), nf=16)
    fast = build_model("irrm_s", 2, blocks_per_level=(1,), nf=16, dense_pallas=True, fuse_gh=True)
    params = random_nonzero_params(jax.eval_shape(plain.init, jax.random.key(0), x)["params"], 3)
    lr, z = jax.jit(fast.apply)({"params": params}, x)
    chex.assert_trees_all_close((lr, z), plain.apply({"params": params}, x), atol=1e-5)
    back = fast.apply({"params": params}, lr, z, method=fast.inverse)
    assert float(jnp.max(jnp.abs(back - x))) < 1e-5
    jaxpr = str(jax.make_jaxpr(lambda p: fast.apply({"params": p}, x))(params))
    assert jaxpr.count("pallas_call[") == 4 + 4 and "conv_general_dilated" not in jaxpr

    def loss(model):
        return lambda p: sum(jnp.sum(jnp.sin(t)) for t in model.apply({"params": p}, x))

    chex.assert_trees_all_close(jax.jit(jax.grad(loss(fast)))(params), jax.grad(loss(plain))(params), atol=1e-5)


def test_under_a_data_mesh_each_device_runs_its_part_of_the_batch():
    x = normal(4, 5, 5, 3)
    params = EnhancedBlock(9, width=16).init(jax.random.key(0), x)["params"]
    names = ["conv_in", "res0_conv_a", "res0_conv_b", "conv_out"]
    kernels, biases = [params[n]["kernel"] for n in names], [params[n]["bias"] for n in names]
    assert_runs_per_device(lambda x: ek.enhanced_block(x, kernels, biases, jnp.float32), x)


def test_channel_counts_powers_of_two_for_pallas():
    assert [dk.padded_channels(c) for c in (3, 16, 24, 45, 48)] == [16, 16, 32, 64, 64]
    assert dk.PALLAS.channels(48, jnp.float32) == 64
