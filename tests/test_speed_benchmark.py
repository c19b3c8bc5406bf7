"""benchmarks/speed.py at a tiny size on the CPU: the fields it reports, a clear error for missing devices.

(K steps in one call, `--steps-per-call`, is `irrm_jax.train.make_multi_step`, tested in tests/test_train.py.)"""

import jax
import pytest

from benchmarks import speed


def test_train_step_benchmark_reports_time_memory_and_compile(tmp_path, capsys):
    r = speed.bench_train(
        "irrm_s_x4", "pad8", batch=1, patch=16, devices=1, repeats=1, steps=1, profile_dir=str(tmp_path / "prof")
    )
    assert r["step_ms"] > 0 and r["compile_s"] > 0
    assert r["patches_per_s"] == pytest.approx(1e3 / r["step_ms"])
    # The compiled step holds at least the parameters and the two Adam moments (float32).
    assert r["step_memory_gb"] * 2**30 > 3 * 4 * 714_840
    assert r["final_loss"] > 0
    assert list((tmp_path / "prof").rglob("perfetto_trace.json.gz"))  # --profile traced the step
    shown = capsys.readouterr().err  # progress: each phase as it starts
    assert "irrm_s_x4 pad8 step, batch 1 x 1 device(s): compiling" in shown
    assert f"compiled in {r['compile_s']:.1f} s; timing 1 x 1 calls" in shown


def test_more_devices_than_available_is_an_error():
    with pytest.raises(ValueError, match="devices asked for"):
        speed.bench_train("irrm_s_x4", "plain", batch=1, patch=16, devices=jax.device_count() + 1, repeats=1, steps=1)


def test_roundtrip_benchmark_reports_time_and_traces(tmp_path, capsys):
    r = speed.bench_roundtrip("irrm_s_x4", "pad8", 16, 24, repeats=1, steps=1, profile_dir=str(tmp_path / "prof"))
    assert r["roundtrip_ms"] > 0 and r["compile_s"] > 0
    assert list((tmp_path / "prof").rglob("perfetto_trace.json.gz"))  # --profile traced the round trips
    assert "irrm_s_x4 pad8 round trip, 16x24: first call (compiles)" in capsys.readouterr().err
