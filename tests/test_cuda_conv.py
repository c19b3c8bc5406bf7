"""The CUDA convolution (speed option dense_cuda): clear errors everywhere; on an NVIDIA GPU with nvcc, the same
function and gradients as the Pallas kernels and XLA (those tests are skipped elsewhere, as in CI)."""

import functools
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import cuda_conv
from irrm_jax import dense_kernels as dk
from irrm_jax.subnets import DenseBlock, conv3x3

ON_GPU = jax.default_backend() == "gpu"
HAS_NVCC = shutil.which("nvcc") is not None
needs_gpu = pytest.mark.skipif(not (ON_GPU and HAS_NVCC), reason="needs an NVIDIA GPU and nvcc")
RNG = np.random.default_rng(0)


def normal(*shape, scale=1.0):
    return jnp.asarray(RNG.standard_normal(shape) * scale, jnp.float32)


@pytest.mark.skipif(ON_GPU, reason="the error is for other backends")
def test_off_gpu_dense_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="NVIDIA GPUs only"):
        DenseBlock(9, cuda=True).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_missing_nvcc_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("IRRM_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(cuda_conv, "DEFAULT_NVCC", str(tmp_path / "no_nvcc"))
    with pytest.raises(RuntimeError, match="nvcc, which was not found"):
        cuda_conv.build_library()
    assert not list(tmp_path.iterdir()), "nothing half-built left behind"


def test_library_is_named_by_its_source_and_jax(monkeypatch, tmp_path):
    monkeypatch.setenv("IRRM_JAX_CACHE", str(tmp_path))
    path = cuda_conv.library_path()
    assert path.parent == tmp_path and path.suffix == ".so"
    monkeypatch.setattr(cuda_conv.jax, "__version__", "0.0.0")
    assert cuda_conv.library_path() != path


@needs_gpu
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 2e-3), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("epilogue", ["bias", "bias_leaky", "none", "leaky_grad"])
@pytest.mark.parametrize("shape", [(2, 8, 62), (1, 9, 13), (2, 17, 130)])  # line widths of 4, 3 and 5 m16 tiles
def test_conv_matches_xla(shape, epilogue, dtype, tolerance):
    """Three inputs (16, 32, 32 channels) -> 32 channels, against float32 XLA convolutions at full precision."""
    layout = dk.FlatLayout(*shape)
    channels, cout = (16, 32, 32), 32
    rounded = lambda a: a.astype(dtype).astype(jnp.float32)  # noqa: E731 (the kernel's operands)
    xs = [rounded(normal(*shape, c)) for c in channels]
    ks = [rounded(normal(3, 3, c, cout, scale=0.1)) for c in channels]
    bias, act = rounded(normal(cout)), rounded(normal(*shape, cout))
    with jax.default_matmul_precision("highest"):
        ref = conv3x3(jnp.concatenate(xs, -1), jnp.concatenate(ks, 2), jnp.float32)
    ref = ref + bias if epilogue in ("bias", "bias_leaky") else ref
    if epilogue == "bias_leaky":
        ref = jax.nn.leaky_relu(ref, dk.SLOPE)
    if epilogue == "leaky_grad":
        ref = jnp.where(act >= 0, ref, dk.SLOPE * ref)
    extra = {"bias": bias, "bias_leaky": bias, "none": None}.get(epilogue, dk.to_flat(act, layout, cout))
    flat = cuda_conv.conv(
        [dk.to_flat(x.astype(dtype), layout, c) for x, c in zip(xs, channels, strict=True)],
        [jnp.swapaxes(k.reshape(9, c, cout), 1, 2).astype(dtype) for k, c in zip(ks, channels, strict=True)],
        layout,
        epilogue,
        None if extra is None else extra.astype(dtype),
    )
    out = dk.from_flat(flat, layout, cout).astype(jnp.float32)
    assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < tolerance
    keep = np.asarray(dk.interior(layout, jnp.arange(layout.rows)))
    assert not np.any(np.asarray(flat.astype(jnp.float32))[~keep]), "zero outside the pixels, margins included"


PALLAS_TRITON_DEPRECATED = "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"  # jax 0.11 on GPUs


@needs_gpu
@pytest.mark.filterwarnings(PALLAS_TRITON_DEPRECATED)
@pytest.mark.parametrize("c_in, features", [(3, 9), (45, 3)])  # IRN x4's sub-networks
def test_dense_block_value_and_gradients_match_pallas(c_in, features):
    x = normal(2, 12, 20, c_in)
    pallas, cuda = DenseBlock(features, pallas=True), DenseBlock(features, cuda=True)
    params = jax.tree.map(lambda p: normal(*p.shape, scale=0.05), pallas.init(jax.random.key(0), x)["params"])

    weights = normal(2, 12, 20, features)

    def loss(block, params, x):  # linear in the output: the gradients' error is the products' (TF32) error
        return jnp.sum(block.apply({"params": params}, x) * weights)

    chex.assert_trees_all_close(
        cuda.apply({"params": params}, x), pallas.apply({"params": params}, x), atol=2e-3, rtol=2e-3
    )
    grads = [jax.grad(functools.partial(loss, block), (0, 1))(params, x) for block in (cuda, pallas)]
    for got, want in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        assert float(jnp.linalg.norm(got - want) / (jnp.linalg.norm(want) + 1e-12)) < 3e-3


@needs_gpu
@pytest.mark.filterwarnings(PALLAS_TRITON_DEPRECATED)
def test_full_float32_precision_goes_to_the_pallas_kernel():
    """The kernel's float32 products are TF32; asked for full float32, the Pallas kernel computes instead."""
    layout = dk.FlatLayout(2, 8, 62)
    x, k = dk.to_flat(normal(2, 8, 62, 16), layout, 16), normal(9, 32, 16, scale=0.1)
    with jax.default_matmul_precision("highest"):
        exact = cuda_conv.conv([x], [k], layout, "none")
        chex.assert_trees_all_close(exact, dk.conv([x], [k], layout, "none"), atol=0, rtol=0)
    tf32 = cuda_conv.conv([x], [k], layout, "none")
    assert 0 < float(jnp.max(jnp.abs(tf32 - exact))) < 1e-2
