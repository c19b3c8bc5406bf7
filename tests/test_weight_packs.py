"""Weight packs prepared once for inference (`irrm_jax.models.with_weight_packs`, the ``WEIGHT_PACKS`` collection):
the kernel blocks read them instead of packing their parameters in every call, with the same outputs (Pallas'
interpreter here; `tests/test_cuda_kernels.py` checks the CUDA kernels on a GPU)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import dense_kernels as dk
from irrm_jax.models import build_model, with_weight_packs
from irrm_jax.subnets import WEIGHT_PACKS, DenseBlock, EnhancedBlock
from irrm_jax.verify import random_nonzero_params
from tests.test_cuda_kernels import PALLAS_TRITON_DEPRECATED
from tests.test_dense_kernels import assert_runs_per_device

pytestmark = pytest.mark.filterwarnings(PALLAS_TRITON_DEPRECATED)  # on GPUs Pallas compiles with Triton

X = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 5, 6, 3)), jnp.float32)
BLOCKS = {
    "dense": lambda dtype=jnp.float32: DenseBlock(9, growth=16, dtype=dtype, pallas=True),
    "enhanced": lambda dtype=jnp.float32: EnhancedBlock(9, width=16, dtype=dtype, pallas=True),
}


def nonzero_variables(module):
    return {"params": random_nonzero_params(jax.eval_shape(module.init, jax.random.key(0), X)["params"], 1)}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_a_block_with_a_pack_reads_it_instead_of_its_parameters(name):
    block = BLOCKS[name]()
    variables = nonzero_variables(block)
    assert WEIGHT_PACKS not in block.init(jax.random.key(0), X), "init stores no pack"
    out, packs = block.apply(variables, X, mutable=[WEIGHT_PACKS])
    chex.assert_trees_all_equal(block.apply({**variables, **packs}, X), out)
    zeros = jax.tree.map(jnp.zeros_like, variables)
    chex.assert_trees_all_equal(block.apply({**zeros, **packs}, X), out)
    assert float(jnp.max(jnp.abs(block.apply(zeros, X) - out))) > 0.1, "without the pack, the parameters count"


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_a_pack_made_for_another_compute_dtype_is_refused(name):
    variables = nonzero_variables(BLOCKS[name]())
    _, packs = BLOCKS[name](jnp.bfloat16).apply(variables, X, mutable=[WEIGHT_PACKS])
    with pytest.raises(ValueError, match="does not fit this block"):
        BLOCKS[name]().apply({**variables, **packs}, X)


def test_a_block_with_a_pack_runs_per_device_under_a_data_mesh():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5, 5, 3)), jnp.float32)
    params = DenseBlock(9, growth=16).init(jax.random.key(0), x)["params"]
    kernels = [params[f"conv{i}"]["kernel"] for i in range(1, 6)]
    biases = [params[f"conv{i}"]["bias"] for i in range(1, 6)]
    pack = dk.dense_block_pack(kernels, biases, jnp.float32)
    assert_runs_per_device(lambda x: dk.dense_block(x, kernels, biases, jnp.float32, pack=pack), x)


def test_with_weight_packs_gives_the_same_model_from_its_packs():
    x = X[:1, :4, :4]
    model = build_model("irn", 2, blocks_per_level=(1,), dense_pallas=True, fuse_gh=True)
    variables = {"params": random_nonzero_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"], 3)}
    packed = with_weight_packs(model, variables)
    assert len(packed[WEIGHT_PACKS]["operations_1"]) == 3, "F, G and H each have a pack (stacked when fused)"
    lr, z = jax.jit(model.apply)(variables, x)
    chex.assert_trees_all_equal(jax.jit(model.apply)(packed, x), (lr, z))
    inverse = jax.jit(lambda v: model.apply(v, lr, z, method=model.inverse))
    chex.assert_trees_all_equal(inverse(packed), inverse(variables))

    zeros = {**packed, "params": jax.tree.map(jnp.zeros_like, variables["params"])}
    chex.assert_trees_all_equal(jax.jit(model.apply)(zeros, x), (lr, z), custom_message="every block reads its pack")
    plain = build_model("irn", 2, blocks_per_level=(1,))
    assert with_weight_packs(plain, variables) is variables, "no kernel blocks, nothing to pack"
