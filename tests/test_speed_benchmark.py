"""benchmarks/speed.py at a tiny size on the CPU: the fields it reports, a clear error for missing devices, and K
steps in one scanned call equal to the same K steps called one by one."""

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from benchmarks import speed
from irrm_jax.losses import LossConfig
from irrm_jax.models import build_model
from irrm_jax.optimizer import create_optimizer, learning_rate_schedule
from irrm_jax.parallel import replicated
from irrm_jax.train import make_train_step
from irrm_jax.train_state import create_train_state


def test_train_step_benchmark_reports_time_memory_and_compile():
    r = speed.bench_train("irrm_s_x4", "pad8", batch=1, patch=16, devices=1, repeats=1, steps=1)
    assert r["step_ms"] > 0 and r["compile_s"] > 0
    assert r["patches_per_s"] == pytest.approx(1e3 / r["step_ms"])
    # The compiled step holds at least the parameters and the two Adam moments (float32).
    assert r["step_memory_gb"] * 2**30 > 3 * 4 * 714_840
    assert r["final_loss"] > 0


def test_more_devices_than_available_is_an_error():
    with pytest.raises(ValueError, match="devices asked for"):
        speed.bench_train("irrm_s_x4", "plain", batch=1, patch=16, devices=jax.device_count() + 1, repeats=1, steps=1)


def test_scanned_steps_equal_the_same_steps_called_one_by_one():
    model = build_model("irrm_s", 2, blocks_per_level=(1,), nf=8)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    optimizer = create_optimizer()
    step = make_train_step(model, optimizer, learning_rate_schedule(1e-3, (100,), 0.5), LossConfig(4.0), mesh)
    hrs = np.random.default_rng(0).uniform(size=(3, 2, 16, 16, 3)).astype(np.float32)  # 3 different batches
    state = create_train_state(model, optimizer, 0, replicated(mesh))
    one_by_one, losses = state, []
    for hr in hrs:
        one_by_one, metrics = step(one_by_one, hr)
        losses.append(float(metrics["loss"]))
    state = create_train_state(model, optimizer, 0, replicated(mesh))  # the first one was donated
    scanned, metrics = speed.scanned_steps(step, mesh)(state, hrs)
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-6)
    chex.assert_trees_all_close(scanned.params, one_by_one.params, rtol=1e-5, atol=1e-7)
    assert int(scanned.step) == int(one_by_one.step) == 3
