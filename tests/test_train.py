"""Data-parallel training on fake CPU devices: configs/test.py end to end, device-count and process-count invariance.

Each test runs tests/train_worker.py in subprocesses, because the fake device count
(``--xla_force_host_platform_device_count``) must be set before JAX starts and this process keeps one device.
Every step is blocked on and every subprocess has a timeout (STACK.md: XLA CPU all-reduce deadlock hazard).
"""

import json
import subprocess
from pathlib import Path

import chex
import jax
import numpy as np
import portpicker
import pytest
from jax.sharding import Mesh

from configs import test as test_config
from irrm_jax import train
from irrm_jax.checkpointing import restore_model
from irrm_jax.losses import LossConfig
from irrm_jax.models import build_model
from irrm_jax.optimizer import create_optimizer, learning_rate_schedule
from irrm_jax.parallel import replicated
from irrm_jax.train_state import create_train_state, init_train_state, model_from_config, optimizer_from_config
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
        log.add(range(n, n + 1), _step_metrics(loss))

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


def test_metric_log_times_steps_until_their_values_are_ready(monkeypatch, tmp_path):
    # Steps run asynchronously: a call of 10 steps returns at once and its time passes while its values are
    # fetched. The step time must include it (it used to be read before the fetch: 0 s a step here).
    clock = _FakeClock()
    monkeypatch.setattr(train.time, "perf_counter", clock)
    device_get = jax.device_get

    def slow_device_get(tree):
        clock.now += 5.0
        return device_get(tree)

    monkeypatch.setattr(jax, "device_get", slow_device_get)
    log = train._MetricLog(_RecordingWriter(), global_batch_size=2, checkpoints=tmp_path)
    values = {name: np.ones(10, np.float32) for name in ("loss_fit", "loss_rec", "loss_ce", "grad_norm")}
    log.add(range(1, 11), dict(values, loss=np.arange(10, dtype=np.float32)))
    means = log.flush(write=True)
    assert means["step_time_s"] == pytest.approx(0.5) and means["hr_patches_per_s"] == pytest.approx(4.0)
    assert means["loss"] == pytest.approx(4.5)  # the stacked values of the ten steps


def test_metric_log_stops_on_non_finite_values_at_a_check(tmp_path):
    log = train._MetricLog(_RecordingWriter(), global_batch_size=1, checkpoints=tmp_path)
    log.last_saved = 2
    log.add(range(3, 4), _step_metrics(np.nan))
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


def test_multi_step_equals_the_same_steps_called_one_by_one():
    model = build_model("irrm_s", 2, blocks_per_level=(1,), nf=8)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    optimizer = create_optimizer()
    step = train.make_train_step(model, optimizer, learning_rate_schedule(1e-3, (100,), 0.5), LossConfig(4.0), mesh)
    hrs = np.random.default_rng(0).uniform(size=(3, 2, 16, 16, 3)).astype(np.float32)  # 3 different batches
    state = create_train_state(model, optimizer, 0, replicated(mesh))
    one_by_one, losses = state, []
    for hr in hrs:
        one_by_one, metrics = step(one_by_one, hr)
        losses.append(float(metrics["loss"]))
    state = create_train_state(model, optimizer, 0, replicated(mesh))  # the first one was donated
    scanned, metrics = train.make_multi_step(step, mesh)(state, hrs)
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-6)
    chex.assert_trees_all_close(scanned.params, one_by_one.params, rtol=1e-5, atol=1e-7)
    assert int(scanned.step) == int(one_by_one.step) == 3


def test_calls_end_at_multiples_of_steps_per_call_and_at_the_last_step():
    assert list(train._calls(0, 5, 1)) == [range(1, 2), range(2, 3), range(3, 4), range(4, 5), range(5, 6)]
    assert list(train._calls(0, 5, 2)) == [range(1, 3), range(3, 5), range(5, 6)]
    assert list(train._calls(3, 10, 4)) == [range(4, 5), range(5, 9), range(9, 11)]  # resumed at step 3
    assert list(train._calls(8, 8, 4)) == []


def _run_in_process(workdir: Path, **train_overrides) -> dict[str, np.ndarray]:
    config = test_config.get_config()
    config.data.validation = ""
    config.train.update(train_overrides)
    return flatten(train.train_and_evaluate(config, workdir).params)


@pytest.mark.timeout(300)
def test_steps_per_call_trains_the_same_run(tmp_path):
    intervals = dict(num_steps=5, log_every=2, checkpoint_every=2)
    one_by_one = _run_in_process(tmp_path / "k1", steps_per_call=1, **intervals)
    two_per_call = _run_in_process(tmp_path / "k2", steps_per_call=2, **intervals)  # calls: 1-2, 3-4, 5
    assert_params_close(two_per_call, one_by_one, atol=1e-6)

    def logged(workdir):
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["grad_norm"]) for r in records if r["split"] == "train"]

    expected = logged(tmp_path / "k1")
    assert [s for s, *_ in expected] == [2, 4, 5]
    for (step, loss, grad_norm), (step_k, loss_k, grad_norm_k) in zip(expected, logged(tmp_path / "k2"), strict=True):
        assert step_k == step and loss_k == pytest.approx(loss, rel=1e-5) and grad_norm_k == pytest.approx(grad_norm)
    assert sorted(p.name for p in (tmp_path / "k2" / "checkpoints").iterdir()) == ["4", "5"]


def test_intervals_must_be_multiples_of_steps_per_call(tmp_path):
    with pytest.raises(ValueError, match=r"train.log_every \(3\) must be a multiple of train.steps_per_call \(2\)"):
        _run_in_process(tmp_path, steps_per_call=2, log_every=3)


@pytest.mark.timeout(300)
def test_pallas_dense_blocks_same_global_batch_on_2_devices_and_1_device(tmp_path):
    """The Pallas DenseBlocks run per device under shard_map; the step equals the one-device step."""
    args = [
        "steps",
        "--dense-pallas",
        "--out",
        str(tmp_path / "p2.npz"),
        "--single-device-out",
        str(tmp_path / "p1.npz"),
    ]
    assert "2 devices" in finish(launch(args, devices=2))
    on_two, on_one = load(tmp_path / "p2.npz"), load(tmp_path / "p1.npz")
    assert any("conv5" in k for k in on_one), "an IRN (DenseBlocks)"
    assert_params_close(on_two, on_one, atol=1e-5)
