"""benchmarks/residual_unit.py off the GPU: a clear error; the pack it times from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import residual_unit
from irrm_jax import dense_kernels as dk

ON_GPU = jax.default_backend() == "gpu"


@pytest.mark.skipif(ON_GPU, reason="the error is for other backends")
def test_off_gpu_the_benchmark_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        residual_unit.main(["--width", "128"])
    assert "the residual-unit kernel needs the CUDA kernels" in capsys.readouterr().err


def test_the_unit_packs_hold_each_members_conv_a_and_conv_b_with_their_k_major_copies():
    kernels = jnp.arange(2 * 2 * 9 * 4 * 4, dtype=jnp.float32).reshape(2, 2, 9, 4, 4)  # small integers: TF32 values
    packs = residual_unit.unit_packs(kernels, jnp.ones((2, 2, 4)))
    assert sorted(name for name, _, _ in packs.slots) == ["b0", "b1", "w0.0", "w0.0.t", "w1.0", "w1.0.t"]
    member = dk.WeightPack(packs.buffer[1], packs.slots)
    np.testing.assert_array_equal(member["w1.0"], kernels[1, 1])
    np.testing.assert_array_equal(member["w0.0.t"], np.swapaxes(kernels[1, 0], 1, 2))
