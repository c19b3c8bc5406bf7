"""benchmarks/profile_summary.py on a hand-made trace: busy time, span and per-category sums per traced call."""

import gzip
import json

import pytest

from benchmarks import profile_summary


def _trace(tmp_path):
    meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}  # noqa: E731
    kernel = lambda tid, name, ts, dur: {"ph": "X", "pid": 2, "tid": tid, "name": name, "ts": ts, "dur": dur}  # noqa: E731
    events = [
        meta(1, None, "process_name", "/host:CPU"),
        meta(2, None, "process_name", "/device:GPU:0"),
        meta(2, 7, "thread_name", "Stream #7(Compute)"),
        meta(2, 8, "thread_name", "Stream #8(MemcpyH2D)"),
        meta(2, 9, "thread_name", "XLA Ops"),  # the same work seen as HLO ops: not counted again
        {"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction(step)", "ts": 0, "dur": 500},
        kernel(7, "dense_conv_bias_leaky_72x72", 100, 40),
        kernel(7, "dense_conv_bias_leaky_72x72__1", 150, 60),  # XLA's second instance: counted with the first
        kernel(7, "dense_weight_grad_72x72", 210, 30),
        kernel(7, "loop_add_fusion_12", 300, 20),
        kernel(8, "Memcpy HtoD", 120, 50),  # overlaps the first two kernels by 20 + 10 us
        kernel(9, "custom-call.12", 100, 400),
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


def test_summary_counts_device_streams_per_call(tmp_path):
    summary = profile_summary.summarize(profile_summary.find_trace(_trace(tmp_path).parent), calls=2, top=10)
    (device,) = summary["devices"]
    assert device["device"] == "/device:GPU:0"
    assert device["kernels_per_call"] == 2.5  # 5 stream kernels over 2 calls; host and "XLA Ops" events left out
    # Union of [100,140] [120,170] [150,210] [210,240] [300,320] = 100..240 and 300..320: 160 us.
    assert device["busy_ms_per_call"] == pytest.approx(160 / 2 / 1e3)
    assert device["span_ms_per_call"] == pytest.approx(220 / 2 / 1e3)
    categories = {r["name"]: r["ms_per_call"] * 1e3 for r in device["categories"]}
    assert categories == {
        "sub-network convolution (Pallas or CUDA)": 50,
        "copy / set": 25,
        "sub-network kernel gradient (Pallas or CUDA)": 15,
        "XLA fusion or other": 10,
    }
    first = device["kernels"][0]
    assert (first["name"], first["kernels_per_call"], first["mean_us"]) == ("dense_conv_bias_leaky_72x72", 1, 50)
    assert [r["name"] for r in device["kernels"]][1:] == ["Memcpy HtoD", "dense_weight_grad_72x72", "loop_add_fusion"]


def test_cuda_kernels_mangled_names_are_categorised():
    cuda = (
        "_ZN53_GLOBAL__N__5945d75d_20_dense_weight_grad_cu_8834eef524dense_weight_grad_kernelIfLi16ELi80EEEvNS_6ParamsE"
    )
    assert profile_summary.category(cuda) == "sub-network kernel gradient (Pallas or CUDA)"
    conv = "_ZN53_GLOBAL__N__3b1f0c2d_13_dense_conv_cu_77a1b3c417dense_conv_kernelI13__nv_bfloat16Li32ELi5ELi2EEEv"
    assert profile_summary.category(conv) == "sub-network convolution (Pallas or CUDA)"
    unit = "void (anonymous namespace)::residual_unit_kernel<float, 32>((anonymous namespace)::Params, "
    assert profile_summary.category(unit) == "sub-network convolution (Pallas or CUDA)"


def test_a_trace_without_device_kernels_is_a_clear_error(tmp_path):
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": [{"ph": "M", "pid": 1, "name": "thread_name", "args": {"name": "python"}}]}, f)
    with pytest.raises(ValueError, match="no kernels on a /device: stream"):
        profile_summary.summarize(path, calls=1, top=5)
    with pytest.raises(FileNotFoundError, match="no perfetto_trace"):
        profile_summary.find_trace(tmp_path / "empty_folder_that_does_not_exist")
