"""The CUDA kernels (speed option dense_cuda): clear errors everywhere; on an NVIDIA GPU with nvcc, the same
convolutions, kernel gradients and DenseBlock gradients as XLA and the Pallas kernels (those tests are skipped
elsewhere, as in CI)."""

import functools
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import cuda_kernels
from irrm_jax import dense_kernels as dk
from irrm_jax.models import build_model, with_weight_packs
from irrm_jax.subnets import DenseBlock, EnhancedBlock, conv3x3
from irrm_jax.verify import random_nonzero_params

ON_GPU = jax.default_backend() == "gpu"
HAS_NVCC = shutil.which("nvcc") is not None
needs_gpu = pytest.mark.skipif(not (ON_GPU and HAS_NVCC), reason="needs an NVIDIA GPU and nvcc")
RNG = np.random.default_rng(0)


def normal(*shape, scale=1.0):
    return jnp.asarray(RNG.standard_normal(shape) * scale, jnp.float32)


def kernel_pack(arrays: dict) -> dk.WeightPack:
    """A pack of these arrays and, after each kernel (9, c, cout), its K-major copy (name.t: (9, cout, c)), which
    the warpgroup convolutions read (`dk.pack_weights`)."""
    with_copies = {}
    for name, a in arrays.items():
        with_copies[name] = a
        if a.ndim == 3:
            with_copies[f"{name}.t"] = jnp.swapaxes(a, 1, 2)
    return dk.WeightPack.of(with_copies)


@pytest.mark.skipif(ON_GPU, reason="the error is for other backends")
def test_off_gpu_dense_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="NVIDIA GPUs only"):
        DenseBlock(9, cuda=True).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_missing_nvcc_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("IRRM_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(cuda_kernels, "DEFAULT_NVCC", str(tmp_path / "no_nvcc"))
    with pytest.raises(RuntimeError, match="nvcc, which was not found"):
        cuda_kernels.build_library()
    assert not list(tmp_path.iterdir()), "nothing half-built left behind"


def test_library_is_named_by_its_source_and_jax(monkeypatch, tmp_path):
    monkeypatch.setenv("IRRM_JAX_CACHE", str(tmp_path))
    path = cuda_kernels.library_path()
    assert path.parent == tmp_path and path.suffix == ".so"
    monkeypatch.setattr(cuda_kernels.jax, "__version__", "0.0.0")
    assert cuda_kernels.library_path() != path


def tf32_reference(a: np.ndarray) -> np.ndarray:
    """Normal float32 values rounded to 11 significant bits, ties away from zero, in float64 arithmetic."""
    mantissa, exponent = np.frexp(np.abs(a.astype(np.float64)))  # |a| = mantissa * 2**exponent, mantissa in [0.5, 1)
    return (np.sign(a) * np.floor(mantissa * 2**11 + 0.5) * 2.0 ** (exponent - 11)).astype(np.float32)


def test_round_to_tf32_rounds_to_nearest_with_ties_away_from_zero():
    ulp = 2.0**-10  # TF32's spacing at 1
    cases = {
        1 + ulp / 4: 1.0,
        1 + ulp / 2: 1 + ulp,  # a tie: away from zero
        1 + 3 * ulp / 2: 1 + 2 * ulp,  # a tie: away from zero, not to even
        -(1 + ulp / 2): -(1 + ulp),
        2 - ulp / 4: 2.0,  # a carry into the exponent
        1 + ulp: 1 + ulp,
        0.0: 0.0,
        np.inf: np.inf,
        -np.inf: -np.inf,
    }
    got = np.asarray(cuda_kernels.round_to_tf32(jnp.asarray(list(cases), jnp.float32)))
    np.testing.assert_array_equal(got, np.asarray(list(cases.values()), np.float32))
    assert np.isnan(np.asarray(cuda_kernels.round_to_tf32(jnp.asarray([np.nan], jnp.float32)))).all()
    a = np.asarray(normal(10_000, scale=100.0))
    np.testing.assert_array_equal(np.asarray(cuda_kernels.round_to_tf32(jnp.asarray(a))), tf32_reference(a))


def test_tf32_operand_rounds_float32_only_where_the_kernels_compute_in_tf32():
    a = normal(64)
    assert not np.array_equal(cuda_kernels.tf32_operand(a), a)
    np.testing.assert_array_equal(cuda_kernels.tf32_operand(a), cuda_kernels.round_to_tf32(a))
    with jax.default_matmul_precision("highest"):  # full float32: the Pallas kernels take the values as they are
        np.testing.assert_array_equal(cuda_kernels.tf32_operand(a), a)
    b = a.astype(jnp.bfloat16)
    np.testing.assert_array_equal(cuda_kernels.tf32_operand(b), b)


def operand(a: jax.Array, dtype) -> jax.Array:
    """A kernel operand's values (bfloat16, or float32 rounded to TF32) in float32, for the references."""
    return cuda_kernels.tf32_operand(a.astype(dtype)).astype(jnp.float32)


@needs_gpu
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-3), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize(  # the forward convolutions with their epilogues, the transposed ones with theirs
    "epilogue, transpose",
    [
        ("bias", False),
        ("bias_leaky", False),
        ("bias_residual", False),
        ("bias_residual_leaky", False),
        ("none", False),
        ("none", True),
        ("leaky_grad", True),
    ],
)
@pytest.mark.parametrize("cout", [16, 32, 48])  # one product's N: 16, 32 or 48 (IRRM-L's and IRN x4's 45 padded)
# rows up to 96 pixels: flat ranges (one block or several); wider: line tiles staged by the TMA (one 64-pixel
# column tile or several, the last partly outside the row; more tiles than an H100's 132 blocks at once, so that
# blocks take several in turn)
@pytest.mark.parametrize("shape", [(2, 8, 62), (1, 9, 13), (1, 5, 126), (1, 6, 158), (2, 17, 130), (2, 290, 130)])
def test_conv_matches_xla(shape, cout, epilogue, transpose, dtype, tolerance):
    """Three inputs (16, 32, 32 channels) -> cout channels, against float32 XLA convolutions at full precision on
    the same operands; float32 feature maps and their gradients are stored as TF32 values. A transposed
    convolution's kernel (9, cout, c) is the convolution's with its taps reversed and channel axes swapped."""
    layout = dk.FlatLayout(*shape)
    channels = (16, 32, 32)
    xs = [operand(normal(*shape, c), dtype) for c in channels]
    kernel_shapes = [(3, 3, cout, c) if transpose else (3, 3, c, cout) for c in channels]
    ks = [operand(normal(*s, scale=0.1), dtype) for s in kernel_shapes]
    bias, act = operand(normal(cout), dtype), operand(normal(*shape, cout), dtype)
    hwio = [k[::-1, ::-1].swapaxes(2, 3) if transpose else k for k in ks]
    with jax.default_matmul_precision("highest"):
        ref = conv3x3(jnp.concatenate(xs, -1), jnp.concatenate(hwio, 2), jnp.float32)
    ref = ref + bias if epilogue in dk.BIAS_EPILOGUES else ref
    ref = ref + act if epilogue in dk.RESIDUAL_EPILOGUES else ref  # the residual
    if epilogue in ("bias_leaky", "bias_residual_leaky"):
        ref = jax.nn.leaky_relu(ref, dk.SLOPE)
    if epilogue == "leaky_grad":
        ref = jnp.where(act >= 0, ref, dk.SLOPE * ref)
    kernels = [k.reshape(9, *k.shape[2:]).astype(dtype) for k in ks]
    pack = kernel_pack({"k0": kernels[0], "bias": bias.astype(dtype), "k1": kernels[1], "k2": kernels[2]})
    flat_act = dk.to_flat(act.astype(dtype), layout, cout)
    extra = {"none": None, "leaky_grad": flat_act}.get(epilogue, "bias")
    flat = cuda_kernels.conv(
        [dk.to_flat(x.astype(dtype), layout, c) for x, c in zip(xs, channels, strict=True)],
        pack,
        ["k0", "k1", "k2"],
        layout,
        epilogue,
        extra,
        transpose,
        flat_act if epilogue in dk.RESIDUAL_EPILOGUES else None,
    )
    out = dk.from_flat(flat, layout, cout).astype(jnp.float32)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < tolerance
    keep = np.asarray(dk.interior(layout, jnp.arange(layout.rows)))
    assert not np.any(np.asarray(flat.astype(jnp.float32))[~keep]), "zero outside the pixels, margins included"
    if dtype == jnp.float32 and epilogue in ("bias_leaky", "bias_residual_leaky", "leaky_grad"):
        np.testing.assert_array_equal(flat, cuda_kernels.round_to_tf32(flat))


@needs_gpu
@pytest.mark.parametrize("shape", [(2, 8, 62), (2, 17, 130)])  # flat ranges, line tiles
def test_a_bias_convolution_writes_its_tf32_copy_beside_it(shape):
    """``with_operand``: the float32 output and, from the same kernel, its TF32 rounding (the next convolution's
    input); vmapped, each member's."""
    layout = dk.FlatLayout(*shape)
    x = dk.to_flat(operand(normal(*shape, 32), jnp.float32), layout, 32)
    pack = kernel_pack({"k": operand(normal(9, 32, 48, scale=0.1), jnp.float32), "bias": normal(48)})

    def conv(x, **options):
        return cuda_kernels.conv([x], pack, ["k"], layout, "bias", "bias", **options)

    out, copy = conv(x, with_operand=True)
    chex.assert_trees_all_equal(out, conv(x))
    chex.assert_trees_all_equal(copy, cuda_kernels.round_to_tf32(out))
    assert float(jnp.max(jnp.abs(copy - out))) > 0, "the copy is rounded"
    keep = np.asarray(dk.interior(layout, jnp.arange(layout.rows)))
    assert not np.any(np.asarray(copy)[~keep]), "the copy is zero outside the pixels too, margins included"
    outs, copies = jax.vmap(lambda x: conv(x, with_operand=True))(jnp.stack([x, 2 * x]))
    chex.assert_trees_all_equal(copies[1], cuda_kernels.round_to_tf32(conv(2 * x)))
    chex.assert_trees_all_equal(outs[0], out)


@needs_gpu
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("growth, features", [(32, 16), (16, 16)])  # IRN's (45 -> 3 and 3 -> 9 at x4), small
@pytest.mark.parametrize("shape", [(2, 8, 62), (2, 17, 130)])  # flat ranges, line tiles
def test_the_last_two_dense_layers_in_two_calls_are_those_layers(shape, growth, features, dtype, tolerance):
    """`last_two_layers` on a DenseBlock's layers 1 and 2: the feature map x2 is the one-layer call's, bit for bit,
    and the block's output the last layer's call on x, x1 and x2, up to the order of its sums (float32) or their
    rounding to bfloat16; both zero outside the pixels; vmapped, each member's."""
    layout = dk.FlatLayout(*shape)
    kernels, biases = dense_layers(16, growth, features)
    kernels = jax.tree.map(lambda k: (0.1 * k).astype(dtype), kernels)
    biases = jax.tree.map(lambda b: b.astype(dtype), biases)
    joint = dk.pack_weights(cuda_kernels.CUDA, kernels, biases, joint_last=True)
    separate = dk.pack_weights(cuda_kernels.CUDA, kernels, biases)
    x = cuda_kernels.tf32_operand(dk.to_flat(normal(*shape, 16).astype(dtype), layout, 16))
    feats = [x, cuda_kernels.conv([x], separate, ["w0.0"], layout, "bias_leaky", "b0")]

    def layers(feats, joint):
        return cuda_kernels.last_two_layers(feats, joint, layout, 1)

    x2, out = layers(feats, joint)
    want_x2 = cuda_kernels.conv(feats, separate, ["w1.0", "w1.1"], layout, "bias_leaky", "b1")
    want = cuda_kernels.conv([*feats, want_x2], separate, ["w2.0", "w2.1", "w2.2"], layout, "bias", "b2")
    chex.assert_trees_all_equal(x2, want_x2)
    error = jnp.linalg.norm((out - want).astype(jnp.float32)) / jnp.linalg.norm(want.astype(jnp.float32))
    assert 0 < float(error) < tolerance, "the sums in another order (float32) or rounded (bfloat16)"
    keep = np.asarray(dk.interior(layout, jnp.arange(layout.rows)))
    for a in (x2, out):
        assert not np.any(np.asarray(a.astype(jnp.float32))[~keep]), "zero outside the pixels, margins included"
    other = jax.tree.map(lambda a: -a, joint)  # a second member: the kernels and biases negated
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), joint, other)
    members = jax.vmap(layers, in_axes=(None, 0))(feats, stacked)
    chex.assert_trees_all_equal([m[0] for m in members], [x2, out])
    chex.assert_trees_all_equal([m[1] for m in members], layers(feats, other))


@needs_gpu
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-4), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("cout", [16, 32, 48, 64])
@pytest.mark.parametrize("shape", [(2, 8, 62), (1, 9, 13), (2, 5, 76)])  # tile lines of 64, 48 and 80 pixels
@pytest.mark.parametrize("blocks", [1, cuda_kernels.WEIGHT_GRAD_BLOCKS])  # one block summing every tile, or many
def test_weight_grads_match_xla(blocks, shape, cout, dtype, tolerance, monkeypatch):
    """Three layers: one reading inputs of 16 and 32 channels, one reading that 32-channel input again (as a
    DenseBlock's layers share inputs), both of cout outputs (one call), and one of another output width (a call of
    its own): each layer's kernel and bias gradients against XLA's at full precision."""
    monkeypatch.setattr(cuda_kernels, "WEIGHT_GRAD_BLOCKS", blocks)
    layout = dk.FlatLayout(*shape)
    xs = [operand(normal(*shape, c), dtype) for c in (16, 32, 32)]
    layers = [((0, 1), cout), ((1,), cout), ((2,), 32 if cout == 16 else 16)]  # (the inputs read, output width)
    gs = [operand(normal(*shape, width), dtype) for _, width in layers]
    flat = [dk.to_flat(a.astype(dtype), layout, a.shape[-1]) for a in xs + gs]
    pairs = [([flat[i] for i in ins], flat[3 + k]) for k, (ins, _) in enumerate(layers)]
    got = cuda_kernels.weight_grads(pairs, layout)
    for (ins, width), g, (grads, bias) in zip(layers, gs, got, strict=True):
        x = jnp.concatenate([xs[i] for i in ins], -1)
        with jax.default_matmul_precision("highest"):
            _, vjp = jax.vjp(lambda k, x=x: conv3x3(x, k, jnp.float32), jnp.zeros((3, 3, x.shape[-1], width)))
            (want,) = vjp(g)
        want = want.reshape(9, x.shape[-1], width)
        kernel = jnp.concatenate(grads, axis=1)
        assert [k.shape[1] for k in grads] == [xs[i].shape[-1] for i in ins]
        assert kernel.shape == want.shape and kernel.dtype == jnp.float32
        assert float(jnp.linalg.norm(kernel - want) / jnp.linalg.norm(want)) < tolerance
        chex.assert_trees_all_close(bias, jnp.sum(g, (0, 1, 2)), atol=tolerance * float(jnp.max(jnp.abs(bias))))


def test_k_major_kernel_copies_packed_for_the_cuda_convolutions_only():
    """The CUDA convolutions' warpgroup products read each kernel's K-major copy from the pack; the Pallas kernels
    read the HWIO kernels alone."""
    kernels, biases = ((normal(9, 16, 32), normal(9, 32, 32)),), (normal(32),)
    pack = dk.pack_weights(cuda_kernels.CUDA, kernels, biases)
    assert [name for name, _, _ in pack.slots] == ["w0.0", "w0.0.t", "w0.1", "w0.1.t", "b0"]
    for i, kernel in enumerate(kernels[0]):
        np.testing.assert_array_equal(pack[f"w0.{i}.t"], jnp.swapaxes(cuda_kernels.tf32_operand(kernel), 1, 2))
    assert [name for name, _, _ in dk.pack_weights(dk.PALLAS, kernels, biases).slots] == ["w0.0", "w0.1", "b0"]


def dense_layers(c_in: int, growth: int, features: int, layers: int = 3) -> tuple[tuple, tuple]:
    """A DenseBlock's flat kernels (layer k: one (9, c, cout) a read input) and biases."""
    couts = [growth] * (layers - 1) + [features]
    kernels = tuple(tuple(normal(9, c, cout) for c in [c_in] + [growth] * k) for k, cout in enumerate(couts))
    return kernels, tuple(normal(cout) for cout in couts)


@pytest.mark.parametrize("growth, features, joint", [(32, 16, True), (16, 32, True), (32, 32, False), (32, 48, False)])
def test_the_last_two_dense_layers_kernels_are_packed_side_by_side_where_they_run_together(growth, features, joint):
    """For inference (``joint_last``), where a DenseBlock's last two layers' outputs fit one product (48 or fewer),
    the pack holds, for each input both read, their K-major copies side by side (one kernel of growth + features
    outputs) instead of one copy each; the HWIO kernels are all there either way. The training step's pack keeps a
    copy a kernel."""
    kernels, biases = dense_layers(16, growth, features)
    pack = dk.pack_weights(cuda_kernels.CUDA, kernels, biases, joint_last=True)
    names = [name for name, _, _ in pack.slots]
    hwio = [f"w{k}.{i}" for k in range(3) for i in range(k + 1)]
    assert set(hwio) <= set(names) and dk.joint_layers(cuda_kernels.CUDA, kernels) == (1 if joint else None)
    training = [name for name, _, _ in dk.pack_weights(cuda_kernels.CUDA, kernels, biases).slots]
    assert set(training) == set(hwio) | {f"{name}.t" for name in hwio} | {"b0", "b1", "b2"}
    if not joint:
        assert names == training
        return
    assert [name for name in names if name.endswith(".t")] == ["w0.0.t", "w2.2.t", "w1+2.0.t", "w1+2.1.t"]
    for i in range(2):
        want = jnp.concatenate([jnp.swapaxes(cuda_kernels.tf32_operand(kernels[k][i]), 1, 2) for k in (1, 2)], 1)
        np.testing.assert_array_equal(pack[dk.joint_kernel(1, i)], want)
    single_input = tuple((k[0],) for k in kernels[:2]), biases[:2]  # layers of one input each (IRRM's): none
    assert not any("+" in name for name, _, _ in dk.pack_weights(cuda_kernels.CUDA, *single_input, True).slots)


def test_one_kernel_gradient_call_for_the_layers_of_each_width_within_its_limits():
    def layer(*channels, width=32):
        return [jnp.zeros((1, c)) for c in channels], jnp.zeros((1, width))

    assert cuda_kernels._calls([layer(16), layer(32, width=16), layer(16, 32), layer(32)]) == [[0, 2, 3], [1]]
    many = [layer(16, 16, 16)] * 6  # 18 inputs: 5 layers (15 inputs) in a call, then one
    assert cuda_kernels._calls(many) == [[0, 1, 2, 3, 4], [5]]
    wide = [layer(512), layer(256, 256), layer(16)]  # 1,040 channels: the third layer in a call of its own
    assert cuda_kernels._calls(wide) == [[0, 1], [2]]


@needs_gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("width", cuda_kernels.UNIT_WIDTHS)
# rows of 2 column tiles, the last partly outside; two images (their lines' margins between); more items than an
# H100 runs at once (blocks take several in turn)
@pytest.mark.parametrize("shape", [(1, 5, 100), (2, 13, 130), (2, 150, 300)])
def test_the_residual_unit_kernel_is_its_two_convolutions(shape, width, dtype):
    """`residual_unit`'s one kernel (conv_a's output kept on chip, float32 h rounded there) equals conv_a on h's
    TF32 operand then conv_b bit for bit, alone and vmapped (one h and pack a member, as a fused G and H has them),
    its margins zero; narrower rows are left to the two convolutions (None)."""
    layout = dk.FlatLayout(*shape)
    hs = jnp.stack([dk.to_flat(normal(*shape, width).astype(dtype), layout, width) for _ in range(2)])
    kernels = operand(normal(2, 2, 9, width, width, scale=0.1), dtype).astype(dtype)
    biases = normal(2, 2, width).astype(dtype)

    def unit(h, kernels, biases, fused=True):
        pack = kernel_pack({"w1.0": kernels[0], "b1": biases[0], "w2.0": kernels[1], "b2": biases[1]})
        if fused:
            return cuda_kernels.residual_unit(h, pack, (1, 2), layout)
        h_operand = cuda_kernels.tf32_operand(h)
        hidden = cuda_kernels.conv([h_operand], pack, ["w1.0"], layout, "bias_leaky", "b1")
        return cuda_kernels.conv([hidden], pack, ["w2.0"], layout, "bias_residual_leaky", "b2", residual=h)

    def values(a):
        return np.asarray(a.astype(jnp.float32))

    two_calls = jax.jit(functools.partial(unit, fused=False))
    one = values(jax.jit(unit)(hs[0], kernels[0], biases[0]))
    np.testing.assert_array_equal(one, values(two_calls(hs[0], kernels[0], biases[0])))
    keep = np.asarray(dk.interior(layout, jnp.arange(layout.rows)))
    assert not np.any(one[~keep]), "zero outside the pixels, margins included"
    assert np.any(one[keep] > 0), "not all zero"
    batched = jax.jit(jax.vmap(unit))(hs, kernels, biases)
    for m in range(2):
        np.testing.assert_array_equal(values(batched[m]), values(two_calls(hs[m], kernels[m], biases[m])))
    narrow = dk.FlatLayout(1, 5, cuda_kernels.UNIT_MIN_WIDTH - 1)
    assert cuda_kernels.residual_unit(hs[0], kernel_pack({"w1.0": kernels[0, 0]}), (1, 2), narrow) is None


@needs_gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("epilogue", ["bias_leaky", "leaky_grad"])  # the extra operand a vector or a flat array
# flat ranges, or line tiles (their inputs' tensor maps per member; a block's tiles in turn may span both members)
@pytest.mark.parametrize("shape", [(2, 8, 62), (2, 8, 130), (2, 200, 130)])
def test_vmapped_calls_compute_each_member_as_a_separate_call(shape, epilogue, dtype):
    """Under jax.vmap (fuse_gh: G and H) one call of each kernel serves both members, an unbatched input shared by
    them: bit for bit the results of one call a member (the kernel gradients' partials; XLA may add a batched and
    an unbatched array's partials in different orders)."""
    layout = dk.FlatLayout(*shape)
    shared = dk.to_flat(normal(*shape, 16).astype(dtype), layout, 16)
    own = jnp.stack([dk.to_flat(normal(*shape, 32).astype(dtype), layout, 32) for _ in range(2)])
    forward = epilogue == "bias_leaky"  # a forward convolution, or (leaky_grad) a transposed one
    k0 = normal(2, 9, *((16, 32) if forward else (32, 16)), scale=0.1)
    k1 = normal(2, 9, 32, 32, scale=0.1)
    extra = normal(2, 32) if forward else own[:, :, ::-1].astype(jnp.float32)
    shared, own, k0, k1, extra = (cuda_kernels.tf32_operand(a.astype(dtype)) for a in (shared, own, k0, k1, extra))

    def conv(x1, k0, k1, extra):  # the pack is built in the vmapped function: one buffer a member
        if forward:
            pack = kernel_pack({"k0": k0, "k1": k1, "b": extra})
            return cuda_kernels.conv([shared, x1], pack, ["k0", "k1"], layout, epilogue, "b")
        pack = kernel_pack({"k0": k0, "k1": k1})
        return cuda_kernels.conv([shared, x1], pack, ["k0", "k1"], layout, epilogue, extra, transpose=True)

    def partials(x1, g):  # two layers, the second's gradient shared by the members
        return cuda_kernels.weight_grad_partials([([shared, x1], g), ([x1], own[0])], layout)

    batched_out = jax.jit(jax.vmap(conv))(own, k0, k1, extra)
    batched_partials = jax.jit(jax.vmap(partials))(own, batched_out)
    for m in range(2):
        out = jax.jit(conv)(own[m], k0[m], k1[m], extra[m])
        np.testing.assert_array_equal(batched_out[m], out)
        np.testing.assert_array_equal(batched_partials[m], jax.jit(partials)(own[m], out))
    assert float(jnp.max(jnp.abs(batched_out[0].astype(jnp.float32) - batched_out[1]))) > 0, "members differ"


@needs_gpu
def test_kernels_outside_the_pack_or_misaligned_are_a_clear_error():
    """The kernel stages weights 16 bytes at a time from the pack: a kernel must start at a 16-byte boundary."""
    layout = dk.FlatLayout(1, 4, 4)
    x, k = dk.to_flat(normal(1, 4, 4, 16), layout, 16), cuda_kernels.tf32_operand(normal(9, 16, 16, scale=0.1))
    misaligned = kernel_pack({"pad": jnp.zeros(1), "k": k})
    with pytest.raises(Exception, match="not at 16 bytes"):
        jax.block_until_ready(cuda_kernels.conv([x], misaligned, ["k"], layout, "none"))
    short = dk.WeightPack(k.ravel()[:-16], (("k", 0, (9, 16, 16)), ("k.t", 0, (9, 16, 16))))  # more than it holds
    with pytest.raises(Exception, match="outside the pack"):
        jax.block_until_ready(cuda_kernels.conv([x], short, ["k"], layout, "none"))


@needs_gpu
def test_partials_under_full_float32_are_a_clear_error():
    """weight_grad falls back to Pallas where full float32 is asked for; the kernel's own partials refuse."""
    layout = dk.FlatLayout(1, 4, 4)
    x = dk.to_flat(normal(1, 4, 4, 16), layout, 16)
    with jax.default_matmul_precision("highest"), pytest.raises(ValueError, match="full float32"):
        cuda_kernels.weight_grad_partials([([x], x)], layout)


PALLAS_TRITON_DEPRECATED = "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"  # jax 0.11 on GPUs


@needs_gpu
@pytest.mark.filterwarnings(PALLAS_TRITON_DEPRECATED)
@pytest.mark.parametrize(  # IRN x4's sub-networks; IRRM-M and IRRM-L x4's (width 48: 48 channels on CUDA, 64 on Pallas)
    "sub_network, c_in, features",
    [
        (DenseBlock, 3, 9),
        (DenseBlock, 45, 3),
        (functools.partial(EnhancedBlock, width=32), 3, 9),
        (functools.partial(EnhancedBlock, width=48), 45, 3),
    ],
)
def test_sub_network_value_and_gradients_as_accurate_as_pallas(sub_network, c_in, features):
    """Both kernels' TF32 values and gradients against XLA's at full precision: the CUDA kernels' errors within
    twice the Pallas kernels' (or 2e-3 relative)."""
    x = normal(2, 12, 20, c_in)
    blocks = {"xla": sub_network(features), "pallas": sub_network(features, pallas=True)}
    blocks["cuda"] = sub_network(features, cuda=True)
    params = jax.tree.map(lambda p: normal(*p.shape, scale=0.05), blocks["xla"].init(jax.random.key(0), x)["params"])
    weights = normal(2, 12, 20, features)

    def loss(block, params, x):  # linear in the output: the gradients' error is the products' (TF32) error
        return jnp.sum(block.apply({"params": params}, x) * weights)

    def value_and_grads(name):
        out = blocks[name].apply({"params": params}, x)
        return [out, *jax.tree.leaves(jax.grad(functools.partial(loss, blocks[name]), (0, 1))(params, x))]

    with jax.default_matmul_precision("highest"):
        want = value_and_grads("xla")
    errors = {}
    for name in ("pallas", "cuda"):
        got = value_and_grads(name)
        errors[name] = [float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) for a, b in zip(got, want, strict=True)]
    for cuda, pallas in zip(errors["cuda"], errors["pallas"], strict=True):
        assert cuda < max(2 * pallas, 2e-3), errors


@needs_gpu
@pytest.mark.filterwarnings(PALLAS_TRITON_DEPRECATED)
def test_full_float32_precision_goes_to_the_pallas_kernel():
    """The kernel's float32 products are TF32; asked for full float32, the Pallas kernel computes instead."""
    layout = dk.FlatLayout(2, 8, 62)
    x, k = dk.to_flat(normal(2, 8, 62, 16), layout, 16), normal(9, 16, 32, scale=0.1)
    pack = kernel_pack({"k": k})
    with jax.default_matmul_precision("highest"):
        exact = cuda_kernels.conv([x], pack, ["k"], layout, "none")
        chex.assert_trees_all_close(exact, dk.conv([x], pack, ["k"], layout, "none"), atol=0, rtol=0)
    tf32_pack = kernel_pack({"k": cuda_kernels.tf32_operand(k)})
    tf32 = cuda_kernels.conv([cuda_kernels.tf32_operand(x)], tf32_pack, ["k"], layout, "none")
    assert 0 < float(jnp.max(jnp.abs(tf32 - exact))) < 1e-2


@needs_gpu
@pytest.mark.parametrize("name", ["irn", "irrm_s"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_g_and_h_are_the_same_model_in_fewer_calls(dtype, name):
    """fuse_gh with dense_cuda: G and H run as one call of each kernel (the sub-network vmapped), y1 shared; the
    same values and parameter gradients as the separate calls."""
    x = jnp.asarray(RNG.uniform(size=(2, 16, 16, 3)), jnp.float32)
    models = [
        build_model(name, 2, blocks_per_level=(2,), dense_cuda=True, compute_dtype=dtype, fuse_gh=f)
        for f in (False, True)
    ]
    params = random_nonzero_params(jax.eval_shape(models[0].init, jax.random.key(0), x)["params"], 3)

    def loss(model):
        return lambda p: sum(jnp.sum(jnp.sin(t)) for t in model.apply({"params": p}, x))

    def calls(model):
        return jax.jit(jax.grad(loss(model))).lower(params).as_text().count("custom_call @irrm_dense_")

    separate, fused = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in models)
    # The two add y1's gradients from G and H in different orders; a TF32 operand rounded downstream of that can
    # then land one TF32 step (2**-11) apart. Measured on an H100 over 60 inputs x: at most 1.9e-4 relative (IRRM-S),
    # 8.2e-5 (IRN); 57 of them below 1e-6. bfloat16: y1's two gradients are added in bfloat16.
    tolerance = 2**-11 if dtype == jnp.float32 else 1e-2
    for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(separate), strict=True):
        assert float(jnp.linalg.norm(got - want)) <= tolerance * float(jnp.linalg.norm(want))
    assert calls(models[1]) < calls(models[0])


@needs_gpu
@pytest.mark.parametrize("name", ["irn", "irrm_s"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_packs_made_once_give_the_same_round_trip(dtype, name):
    """`with_weight_packs` on the CUDA kernels (G and H fused; rows wide enough for line tiles): the round trip
    from the packs equals, bit for bit, the one that packs the parameters in every call."""
    x = jnp.asarray(RNG.uniform(size=(1, 16, 264, 3)), jnp.float32)
    model = build_model(name, 2, blocks_per_level=(2,), dense_cuda=True, compute_dtype=dtype, fuse_gh=True)
    variables = {"params": random_nonzero_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"], 3)}

    @jax.jit
    def round_trip(variables):
        lr, z = model.apply(variables, x)
        return lr, model.apply(variables, lr, z, method=model.inverse)

    chex.assert_trees_all_equal(round_trip(with_weight_packs(model, variables)), round_trip(variables))


@needs_gpu
def test_channel_counts_multiples_of_16_where_the_cuda_kernels_compute():
    assert [cuda_kernels.channels(c, jnp.bfloat16) for c in (3, 16, 24, 45, 48)] == [16, 16, 32, 48, 48]
    with jax.default_matmul_precision("highest"):  # full float32: the Pallas kernels compute, in powers of two
        assert cuda_kernels.channels(48, jnp.float32) == 64
