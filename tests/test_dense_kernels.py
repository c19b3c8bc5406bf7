"""Pallas DenseBlock kernels (run in Pallas' interpreter on CPU): the same function and gradients as XLA's (the
bfloat16 and float64 tests for IRRM's Enhanced Block on the same kernels too)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import dense_kernels as dk
from irrm_jax.models import build_model
from irrm_jax.subnets import DenseBlock, EnhancedBlock, conv3x3
from irrm_jax.verify import random_nonzero_params

RNG = np.random.default_rng(0)


def normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


def test_flat_layout_round_trip_and_zero_padding():
    layout = dk.FlatLayout(2, 5, 7, block=16)
    x = normal(2, 5, 7, 3)
    flat = dk.to_flat(x, layout, 16)
    assert flat.shape == (layout.rows, 16) and layout.rows % 16 == 0
    chex.assert_trees_all_equal(dk.from_flat(flat, layout, 3), x)
    keep = dk.interior(layout, jnp.arange(layout.rows))
    assert int(keep.sum()) == 2 * 5 * 7
    assert not np.any(np.asarray(flat)[~np.asarray(keep)]), "zero outside the pixels"
    assert np.all(np.asarray(flat)[np.asarray(keep), 3:] == 0), "zero padding channels"
    # every tap of every pixel stays inside the array
    rows = np.flatnonzero(np.asarray(keep))
    offsets = [int(layout.offset(t)) for t in range(9)]
    assert rows.min() + min(offsets) >= 0 and rows.max() + max(offsets) < layout.rows
    assert offsets == [-10, -9, -8, -1, 0, 1, 8, 9, 10]  # rows of 7 + 2 pixels


def test_weight_pack_holds_its_arrays_one_after_another():
    a, b = normal(2, 3), jnp.arange(4.0)
    pack = dk.WeightPack.of({"a": a, "b": b})
    assert pack.buffer.shape == (10,) and pack.slot("b") == (6, (4,)) and pack.slot("a") == (0, (2, 3))
    chex.assert_trees_all_equal(pack["a"], a)
    chex.assert_trees_all_equal(pack["b"], b)
    with pytest.raises(KeyError, match="no array 'c' in the pack"):
        pack.slot("c")
    with pytest.raises(ValueError, match="one dtype"):
        dk.WeightPack.of({"a": a, "b": b.astype(jnp.bfloat16)})
    leaves, treedef = jax.tree.flatten(pack)
    assert len(leaves) == 1 and jax.tree.unflatten(treedef, leaves).slots == pack.slots, "a pytree of one array"


@pytest.mark.parametrize("epilogue", ["bias", "bias_leaky", "bias_residual", "bias_residual_leaky", "none"])
def test_conv_of_two_inputs_matches_xla(epilogue):
    """conv(inputs, kernels) is the convolution of the concatenated inputs, then bias (a residual) and LeakyReLU."""
    layout = dk.FlatLayout(2, 6, 5, block=16)
    a, b, residual = normal(2, 6, 5, 16), normal(2, 6, 5, 32), normal(2, 6, 5, 16)
    ka, kb, bias = normal(3, 3, 16, 16), normal(3, 3, 32, 16), normal(16)
    ref = conv3x3(jnp.concatenate([a, b], -1), jnp.concatenate([ka, kb], 2), jnp.float32)
    if epilogue != "none":
        ref = ref + bias
    if epilogue in dk.RESIDUAL_EPILOGUES:
        ref = ref + residual
    if epilogue in ("bias_leaky", "bias_residual_leaky"):
        ref = jax.nn.leaky_relu(ref, dk.SLOPE)
    pack = dk.WeightPack.of({"a": ka.reshape(9, 16, 16), "bias": bias, "b": kb.reshape(9, 32, 16)})  # bias between
    flat = dk.conv(
        [dk.to_flat(a, layout, 16), dk.to_flat(b, layout, 32)],
        pack,
        ["a", "b"],
        layout,
        epilogue,
        None if epilogue == "none" else "bias",
        residual=dk.to_flat(residual, layout, 16) if epilogue in dk.RESIDUAL_EPILOGUES else None,
    )
    chex.assert_trees_all_close(dk.from_flat(flat, layout, 16), ref, atol=1e-4, rtol=1e-5)
    keep = np.asarray(dk.interior(layout, jnp.arange(layout.rows)))
    assert not np.any(np.asarray(flat)[~keep]), "the output stays zero outside the pixels"


def test_a_residual_and_with_operand_go_with_their_epilogues_only():
    layout = dk.FlatLayout(1, 4, 4, block=16)
    x = dk.to_flat(normal(1, 4, 4, 16), layout, 16)
    pack = dk.WeightPack.of({"k": normal(9, 16, 16), "bias": normal(16)})
    with pytest.raises(ValueError, match="a residual goes with the epilogues .'bias_residual', 'bias_residual_leaky'"):
        dk.conv([x], pack, ["k"], layout, "bias_leaky", "bias", residual=x)
    for epilogue in dk.RESIDUAL_EPILOGUES:
        with pytest.raises(ValueError, match=f"got epilogue '{epilogue}'"):
            dk.conv([x], pack, ["k"], layout, epilogue, "bias")
    with pytest.raises(ValueError, match="with_operand goes with the 'bias' epilogue"):
        dk.conv([x], pack, ["k"], layout, "bias_leaky", "bias", with_operand=True)
    out, operand = dk.conv([x], pack, ["k"], layout, "bias", "bias", with_operand=True)
    assert operand is out, "Pallas' operands are the values as they are"


def test_transposed_conv_is_the_input_gradient():
    """transpose: the convolution's gradient with respect to its input, from the same HWIO kernels (the backward)."""
    layout = dk.FlatLayout(2, 6, 5, block=16)
    x, g = normal(2, 6, 5, 32), normal(2, 6, 5, 16)
    k1, k2 = normal(3, 3, 32, 16), normal(3, 3, 32, 16)
    _, vjp = jax.vjp(lambda x: conv3x3(x, k1, jnp.float32) + conv3x3(x, k2, jnp.float32), x)
    pack = dk.WeightPack.of({"k1": k1.reshape(9, 32, 16), "k2": k2.reshape(9, 32, 16)})
    g_flat = dk.to_flat(g, layout, 16)
    flat = dk.conv([g_flat, g_flat], pack, ["k1", "k2"], layout, "none", transpose=True)
    chex.assert_trees_all_close(dk.from_flat(flat, layout, 32), vjp(g)[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("programs", [32, 2])  # 7 blocks: one a program, or chunks of 3 (the last past the images)
def test_weight_grad_matches_autodiff(monkeypatch, programs):
    monkeypatch.setattr(dk, "WEIGHT_GRAD_PROGRAMS", programs)
    layout = dk.FlatLayout(2, 6, 5, block=16)
    assert layout.chunk_blocks == (1 if programs == 32 else 3)
    x, g = normal(2, 6, 5, 16), normal(2, 6, 5, 16)
    kernel = normal(3, 3, 16, 16)
    ref = jax.grad(lambda k: jnp.sum(conv3x3(x, k, jnp.float32) * g))(kernel)
    x2, kernel2 = normal(2, 6, 5, 32), normal(3, 3, 32, 16)  # a second input: its own part of the sums
    ref2 = jax.grad(lambda k: jnp.sum(conv3x3(x2, k, jnp.float32) * g))(kernel2)
    (grad, grad2), bias = dk.weight_grad(
        [dk.to_flat(x, layout, 16), dk.to_flat(x2, layout, 32)], dk.to_flat(g, layout, 16), layout
    )
    chex.assert_trees_all_close(grad.reshape(3, 3, 16, 16), ref, atol=1e-4, rtol=1e-5)
    chex.assert_trees_all_close(grad2.reshape(3, 3, 32, 16), ref2, atol=1e-4, rtol=1e-5)
    chex.assert_trees_all_close(bias, jnp.sum(g, axis=(0, 1, 2)), atol=1e-5, rtol=1e-5)


def test_split_weight_grads_sums_the_groups_and_finds_each_layers_rows():
    """Partials of two layers (inputs of 2 + 1 channels, then 3): per tap the kernels' rows, then a bias row a layer."""
    partials = jnp.arange(2 * 9 * 8 * 4, dtype=jnp.float32).reshape(2, 9, 8, 4)  # 2 groups, 6 channels + 2 bias rows
    summed = partials[0] + partials[1]
    ((a, b), bias_a), ((c,), bias_c) = dk.split_weight_grads(partials, [[2, 1], [3]])
    np.testing.assert_array_equal(a, summed[:, 0:2])
    np.testing.assert_array_equal(b, summed[:, 2:3])
    np.testing.assert_array_equal(c, summed[:, 3:6])
    np.testing.assert_array_equal(bias_a, summed[4, 6])
    np.testing.assert_array_equal(bias_c, summed[4, 7])


def assert_same_sub_network(xla, kernels, x, features):
    """Sub-network ``kernels`` (on the Pallas kernels) has ``xla``'s parameters, outputs and gradients."""
    shapes = jax.eval_shape(xla.init, jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(
        jnp.shape, jax.eval_shape(kernels.init, jax.random.key(0), x)["params"]
    ), "the same parameters"
    params = random_nonzero_params(shapes, 1)
    proj = normal(*x.shape[:3], features)

    def loss(block, p, x):
        return jnp.sum(jnp.tanh(block.apply({"params": p}, x)) * proj)

    out = kernels.apply({"params": params}, x)
    chex.assert_trees_all_close(out, xla.apply({"params": params}, x), atol=1e-5, rtol=1e-5)
    assert np.abs(np.asarray(out)).max() > 0.1, "a non-trivial output"
    ref = jax.grad(functools.partial(loss, xla), (0, 1))(params, x)
    assert all(float(jnp.abs(g).max()) > 1e-3 for g in jax.tree.leaves(ref)), "every gradient non-trivial"
    grads = jax.grad(functools.partial(loss, kernels), (0, 1))(params, x)
    chex.assert_trees_all_close(grads, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("c_in,features", [(3, 9), (20, 3)])
def test_dense_block_value_and_gradients_match_xla(c_in, features):
    xla, pallas = DenseBlock(features, growth=16), DenseBlock(features, growth=16, pallas=True)
    assert_same_sub_network(xla, pallas, normal(2, 5, 7, c_in), features)


@pytest.mark.parametrize("sub_network", [DenseBlock, EnhancedBlock])
def test_bfloat16_is_as_close_to_float32_as_xla(sub_network):
    x = normal(1, 6, 6, 3)
    params = random_nonzero_params(jax.eval_shape(sub_network(9).init, jax.random.key(0), x)["params"], 2)
    exact = sub_network(9).apply({"params": params}, x)
    xla = sub_network(9, dtype=jnp.bfloat16).apply({"params": params}, x)
    pallas = sub_network(9, dtype=jnp.bfloat16, pallas=True).apply({"params": params}, x)
    assert pallas.dtype == jnp.bfloat16
    err = lambda y: float(jnp.max(jnp.abs(y.astype(jnp.float32) - exact)))  # noqa: E731
    assert err(pallas) <= 2 * err(xla) + 1e-3


@pytest.mark.parametrize("sub_network", [DenseBlock, EnhancedBlock])
def test_float64_sums_in_float64(sub_network):
    with jax.enable_x64(True):
        x = jnp.asarray(RNG.standard_normal((1, 5, 6, 3)))
        params = random_nonzero_params(jax.eval_shape(sub_network(9).init, jax.random.key(0), x)["params"], 4)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        xla, pallas = sub_network(9, dtype=jnp.float64), sub_network(9, dtype=jnp.float64, pallas=True)
        out = pallas.apply({"params": params}, x)
        assert out.dtype == jnp.float64
        chex.assert_trees_all_close(out, xla.apply({"params": params}, x), atol=1e-12, rtol=1e-12)
        loss = lambda block: lambda p: jnp.sum(jnp.sin(block.apply({"params": p}, x)))  # noqa: E731
        chex.assert_trees_all_close(jax.grad(loss(pallas))(params), jax.grad(loss(xla))(params), atol=1e-11)


def test_growth_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        DenseBlock(3, growth=24, pallas=True).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_irn_with_pallas_dense_blocks_is_the_same_invertible_model():
    x = jnp.asarray(RNG.uniform(size=(1, 8, 8, 3)), jnp.float32)
    plain = build_model("irn", 2, blocks_per_level=(1,))
    fast = build_model("irn", 2, blocks_per_level=(1,), dense_pallas=True)
    params = random_nonzero_params(jax.eval_shape(plain.init, jax.random.key(0), x)["params"], 3)
    lr, z = fast.apply({"params": params}, x)
    chex.assert_trees_all_close((lr, z), plain.apply({"params": params}, x), atol=1e-5)
    back = fast.apply({"params": params}, lr, z, method=fast.inverse)
    assert float(jnp.max(jnp.abs(back - x))) < 1e-5
    jaxpr = str(jax.make_jaxpr(lambda p: fast.apply({"params": p}, x))(params))
    assert "pallas_call" in jaxpr and "conv_general_dilated" not in jaxpr


def test_fused_g_and_h_run_as_one_batched_kernel_call():
    """fuse_gh vmaps G and H over their stacked parameters: each kernel call serves both (a batched pallas_call; with
    dense_cuda a batched FFI call), y1 shared. Same values and gradients as the separate networks."""
    x = jnp.asarray(RNG.uniform(size=(2, 8, 8, 3)), jnp.float32)
    plain = build_model("irn", 2, blocks_per_level=(1,))
    fast = build_model("irn", 2, blocks_per_level=(1,), dense_pallas=True, fuse_gh=True)
    params = random_nonzero_params(jax.eval_shape(plain.init, jax.random.key(0), x)["params"], 3)
    chex.assert_trees_all_close(
        jax.jit(fast.apply)({"params": params}, x), plain.apply({"params": params}, x), atol=1e-5
    )
    jaxpr = str(jax.make_jaxpr(lambda p: fast.apply({"params": p}, x))(params))
    assert jaxpr.count("pallas_call[") == 5 + 5, "F's five convolutions, then G's and H's five together"

    def loss(model):
        return lambda p: sum(jnp.sum(jnp.sin(t)) for t in model.apply({"params": p}, x))

    chex.assert_trees_all_close(jax.jit(jax.grad(loss(fast)))(params), jax.grad(loss(plain))(params), atol=1e-5)


def test_under_a_data_mesh_each_device_runs_its_part_of_the_batch():
    x, params = normal(4, 5, 5, 3), DenseBlock(9, growth=16)
    variables = params.init(jax.random.key(0), x)
    kernels = [variables["params"][f"conv{i}"]["kernel"] for i in range(1, 6)]
    biases = [variables["params"][f"conv{i}"]["bias"] for i in range(1, 6)]
    assert_runs_per_device(lambda x: dk.dense_block(x, kernels, biases, jnp.float32), x)


def assert_runs_per_device(run, x):
    """``run(x)`` on a (4, 5, 5, 3) batch: as it is alone, per device (half the batch each) under a 2-device mesh."""
    assert "shard_map" not in str(jax.make_jaxpr(run)(x))
    mesh = jax.sharding.AbstractMesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))  # as the step's
    with jax.sharding.use_abstract_mesh(mesh):
        jaxpr = str(jax.make_jaxpr(run)(x))
    assert "shard_map" in jaxpr and "f32[2,5,5,3]" in jaxpr, "each device sees half the batch"
