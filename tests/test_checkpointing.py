"""Checkpoints of train_and_evaluate on one CPU device: exact resume, SIGTERM, planted NaN, keep-K, restore API.

(Restoring onto another device count is tested in tests/test_train.py, from a 4-device subprocess.)
"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import test as test_config
from irrm_jax import input_pipeline
from irrm_jax.checkpointing import Checkpointer, find_checkpoint, load_config, restore_model, restore_params
from irrm_jax.prefetch import BatchPrefetcher
from irrm_jax.train import train_and_evaluate


def run(workdir, steps: int, **train_overrides):
    config = test_config.get_config()
    config.data.validation = ""  # validation is exercised in tests/test_train.py; here it would only cost time
    config.train.num_steps = steps
    for name, value in train_overrides.items():
        config.train[name] = value
    return train_and_evaluate(config, workdir)


def train_losses(workdir) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "train"}


def assert_trees_equal(a, b) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def patch_batches(monkeypatch, action_at_call: int, action) -> None:
    """Makes the training loop's n-th global batch go through ``action(batch)`` (counting from 1)."""
    original = input_pipeline.to_global_batch
    calls = []

    def patched(batch, mesh):
        calls.append(1)
        if len(calls) == action_at_call:
            batch = action(batch)
        return original(batch, mesh)

    monkeypatch.setattr(input_pipeline, "to_global_batch", patched)


@pytest.mark.timeout(300)
def test_resume_is_exact_keeps_the_newest_and_restores(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight, 4, checkpoint_every=2)
    run(resumed, 2, checkpoint_every=1)
    assert Checkpointer(resumed, keep=2).all_steps() == [1, 2]
    # Checkpoint 2 of the straight run was written asynchronously while step 3 reused the state's buffers.
    assert_trees_equal(restore_params(straight / "checkpoints" / "2"), restore_params(resumed))
    run(resumed, 4, checkpoint_every=1)
    assert Checkpointer(resumed, keep=2).all_steps() == [3, 4]  # keep_checkpoints = 2
    # Same parameters and the same batches (hence the same losses) as without the restart.
    assert_trees_equal(restore_params(straight), restore_params(resumed))
    straight_losses, resumed_losses = train_losses(straight), train_losses(resumed)
    assert [resumed_losses[s] for s in (3, 4)] == [straight_losses[s] for s in (3, 4)]
    assert straight_losses[3] != straight_losses[1]  # different batches each step
    # From a checkpoint saved while the loop's batches were assembled ahead of it (the straight run's step 2).
    shutil.copytree(straight / "checkpoints" / "2", tmp_path / "from_2" / "checkpoints" / "2")
    run(tmp_path / "from_2", 4, checkpoint_every=2)
    assert [train_losses(tmp_path / "from_2")[s] for s in (3, 4)] == [straight_losses[s] for s in (3, 4)]
    # The restore API: a workdir means its newest step; the model is rebuilt from the stored config.
    assert_trees_equal(restore_params(resumed), restore_params(resumed / "checkpoints" / "4"))
    config = load_config(resumed)
    assert config.model.overrides.nf == 8 and config.model.overrides.blocks_per_level == [1]
    model, params, _ = restore_model(resumed / "checkpoints" / "3")
    lr, z = model.apply({"params": params}, np.zeros((1, 4, 4, 3), np.float32))
    assert lr.shape == (1, 2, 2, 3) and z.shape == (1, 2, 2, 9)
    # Each read opens one checkpoint manager and closes it again.
    opened = []

    class SpyManager(ocp.CheckpointManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.closed = False
            opened.append(self)

        def close(self) -> None:
            self.closed = True
            super().close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ocp, "CheckpointManager", SpyManager)
        load_config(resumed)
        restore_model(resumed)
    assert [manager.closed for manager in opened] == [True, True]


@pytest.mark.timeout(300)
def test_sigterm_saves_a_checkpoint_that_restores_and_resumes(tmp_path, monkeypatch):
    original, taken = BatchPrefetcher.__next__, []

    def next_then_sigterm(self):  # the loop takes its 3rd batch (batches are assembled ahead, on another thread)
        taken.append(1)
        if len(taken) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by the loop's watcher
        return original(self)

    monkeypatch.setattr(BatchPrefetcher, "__next__", next_then_sigterm)
    state = run(tmp_path, 50, checkpoint_every=100)
    assert int(state.step) == 3
    assert find_checkpoint(tmp_path) == (tmp_path.absolute() / "checkpoints", 3)
    model, params, config = restore_model(tmp_path)
    assert_trees_equal(params, jax.tree.map(lambda a: a.addressable_data(0), state.params))
    assert config.train.num_steps == 50 and model.scale == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was removed again
    monkeypatch.undo()
    run(tmp_path, 4, checkpoint_every=100)
    assert find_checkpoint(tmp_path)[1] == 4
    assert sorted(train_losses(tmp_path)) == [1, 2, 3, 4]  # steps 1-3 by the first run, 4 by the second


@pytest.mark.timeout(300)
def test_planted_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    patch_batches(monkeypatch, 3, lambda batch: np.full_like(batch, np.nan))
    with pytest.raises(FloatingPointError, match=r"non-finite training values at step 3: loss=nan.*step 2"):
        run(tmp_path, 6, checkpoint_every=2)
    assert find_checkpoint(tmp_path)[1] == 2
    params = restore_params(tmp_path)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


def test_find_checkpoint_explains_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint(tmp_path)
