"""Data-parallel training on fake CPU devices: configs/test.py end to end, device-count and process-count invariance.

Each test runs tests/train_worker.py in subprocesses, because the fake device count
(``--xla_force_host_platform_device_count``) must be set before JAX starts and this process keeps one device.
Every step is blocked on and every subprocess has a timeout (STACK.md: XLA CPU all-reduce deadlock hazard).
"""

import json
import subprocess
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from configs import test as test_config
from irrm_jax import train
from irrm_jax.checkpointing import restore_model
from irrm_jax.train_state import init_train_state, model_from_config, optimizer_from_config
from irrm_jax.verify import random_nonzero_params
from tests.subprocesses import start_python, wait_ok

WORKER = Path(__file__).resolve().parent / "train_worker.py"
TIMEOUT_S = 240


def launch(args: list[str], devices: int) -> subprocess.Popen:
    return start_python(WORKER, *args, devices=devices)


def finish(proc: subprocess.Popen) -> str:
    return wait_ok(proc, TIMEOUT_S)


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


def assert_params_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


def flatten(params, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for name, value in params.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = np.asarray(value)
    return out


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _step_metrics(loss: float) -> dict[str, jax.Array]:
    names = ("loss", "loss_fit", "loss_rec", "loss_ce", "grad_norm")
    return {name: jax.numpy.float32(loss if name == "loss" else 1.0) for name in names}


class _RecordingWriter:
    def __init__(self):
        self.records: list[tuple[int, str, dict[str, float]]] = []

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        self.records.append((step, split, dict(scalars)))


def test_metric_log_means_cover_the_whole_interval_and_exclude_validation_time(monkeypatch, tmp_path):
    clock = _FakeClock()
    monkeypatch.setattr(train.time, "perf_counter", clock)
    writer = _RecordingWriter()
    log = train._MetricLog(writer, global_batch_size=4, checkpoints=tmp_path)

    def step(n: int, loss: float, seconds: float) -> None:
        clock.now += seconds
        log.add(n, _step_metrics(loss))

    # The loop of train_and_evaluate with log_every=4 and a checkpoint at step 2.
    step(1, 10.0, seconds=30.0)  # compilation
    assert log.flush(write=False)["step_time_s"] == pytest.approx(30.0)
    log.restart_clock(forget=True)
    step(2, 2.0, seconds=1.0)
    log.flush(write=False)  # checked before the checkpoint, not written
    clock.now += 100.0  # validation and saving
    log.restart_clock()
    step(3, 4.0, seconds=1.0)
    step(4, 12.0, seconds=1.0)
    means = log.flush(write=True)
    assert writer.records == [(4, "train", means)]
    assert means["loss"] == pytest.approx((10 + 2 + 4 + 12) / 4)  # every step since the last write
    assert means["step_time_s"] == pytest.approx(1.0)  # neither compilation nor validation/saving
    assert means["hr_patches_per_s"] == pytest.approx(4.0)
    # The next interval starts empty.
    step(5, 6.0, seconds=2.0)
    assert log.flush(write=True)["loss"] == pytest.approx(6.0)
    assert writer.records[-1][0] == 5 and writer.records[-1][2]["step_time_s"] == pytest.approx(2.0)


def test_metric_log_stops_on_non_finite_values_at_a_check(tmp_path):
    log = train._MetricLog(_RecordingWriter(), global_batch_size=1, checkpoints=tmp_path)
    log.last_saved = 2
    log.add(3, _step_metrics(np.nan))
    with pytest.raises(FloatingPointError, match="step 3.*checkpoint is step 2"):
        log.flush(write=False)


@pytest.fixture(scope="module")
def four_device_steps(tmp_path_factory) -> tuple[dict, dict]:
    """Parameters after 2 steps on fixed batches: over 4 devices, and over 1 device (one 4-device process)."""
    tmp = tmp_path_factory.mktemp("steps4")
    out = finish(launch(["steps", "--out", str(tmp / "p4.npz"), "--single-device-out", str(tmp / "p1.npz")], devices=4))
    assert "4 devices" in out
    return load(tmp / "p4.npz"), load(tmp / "p1.npz")


@pytest.mark.timeout(300)
def test_test_config_trains_on_4_devices_and_restores_on_1(tmp_path):
    workdir = tmp_path / "run"
    finish(launch(["train", "--workdir", str(workdir), "--steps", "2", "--out", str(tmp_path / "p.npz")], devices=4))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2]
    for r in train_records:
        assert r["loss"] == pytest.approx(r["loss_fit"] + r["loss_rec"] + r["loss_ce"], rel=1e-5)
        assert r["learning_rate"] == pytest.approx(2e-4) and r["grad_norm"] > 0 and r["hr_patches_per_s"] > 0
    (validation,) = [r for r in records if r["split"] == "validation"]
    assert validation["step"] == 2 and 0 < validation["psnr_y"] < 100 and validation["psnr_y_lr"] > 20
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # Written from 4 devices, restored here onto this process's single device.
    model, params, config = restore_model(workdir)
    assert config.model.name == "irrm_s" and config.train.num_steps == 2 and model.scale == 2
    assert_params_close(flatten(params), load(tmp_path / "p.npz"), atol=0)


@pytest.mark.timeout(300)
def test_same_global_batch_on_4_devices_and_1_device(four_device_steps):
    on_four, on_one = four_device_steps
    assert_params_close(on_four, on_one, atol=1e-5)
    # Every leaf moved (by about the learning rate per step), so the comparison is not vacuous.
    config = test_config.get_config()
    model, optimizer = model_from_config(config), optimizer_from_config(config)
    initial = flatten(random_nonzero_params(init_train_state(model, optimizer, config.train.seed).params, 1, 0.5))
    assert min(np.abs(on_one[k] - initial[k]).max() for k in initial) > 1e-4


@pytest.mark.timeout(300)
def test_two_processes_match_one_process_and_train(tmp_path, four_device_steps):
    on_four, _ = four_device_steps
    address = f"localhost:{portpicker.pick_unused_port()}"
    workdir = tmp_path / "run"
    common = ["steps", "--coordinator", address, "--num-processes", "2", "--train-workdir", str(workdir)]
    procs = [
        launch([*common, "--process-id", str(i), "--out", str(tmp_path / f"mp{i}.npz")], devices=2) for i in (0, 1)
    ]
    outputs = [finish(p) for p in procs]
    assert "process 1 of 2, 4 devices" in outputs[1]
    assert_params_close(load(tmp_path / "mp0.npz"), on_four, atol=1e-5)
    # train_and_evaluate across the two processes: metrics from process 0, a checkpoint that restores here.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (2, "validation")]
    _, params, _ = restore_model(workdir)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
