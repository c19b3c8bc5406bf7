"""Where a traced GPU step's time goes: the device kernels of a jax.profiler trace, by category and by kernel.

    python -m benchmarks.speed --models irn_x4 --variants bf16+pallas --roundtrip= --profile /tmp/prof
    python -m benchmarks.profile_summary /tmp/prof/irn_x4_bf16+pallas_b16_d1 --calls 3

Reads the newest ``perfetto_trace.json.gz`` under the path (``jax.profiler.trace(..., create_perfetto_trace=True)``
writes one; so does the training loop's ``train.profile_steps``). Counts the kernels on the GPU streams of every
device (threads named ``Stream ...`` of the ``/device:...`` processes), per traced call: busy time (the union of the
kernels' intervals), span (first start to last end) and the sum of kernel durations by category and by name
(the instances of one kernel, which XLA numbers, together). Prints Markdown tables; ``--json`` writes them.
"""

import argparse
import collections
import gzip
import json
import re
from pathlib import Path

CATEGORIES = (  # (category, regular expression on the kernel name); the first match wins
    # the CUDA kernels' names are mangled or demangled: not anchored
    ("sub-network convolution (Pallas or CUDA)", r"dense_conv_|residual_unit_kernel"),
    ("sub-network kernel gradient (Pallas or CUDA)", r"dense_weight_grad_"),
    ("cuDNN channel padding", r"AddPadding"),
    ("convolution / matrix product library kernel", r"cudnn|xmma|gemm|cutlass|conv|^sm\d\d_"),
    ("copy / set", r"(?i)memcpy|memset"),
    ("XLA fusion or other", r""),
)


def find_trace(path: Path) -> Path:
    if path.is_file():
        return path
    traces = sorted(path.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {path}")
    return traces[-1]


def category(name: str) -> str:
    return next(c for c, pattern in CATEGORIES if re.search(pattern, name))


def kernel_name(name: str) -> str:
    """The name without XLA's numeric suffix for repeated instances (``fusion_12``, ``dense_conv_..._72x72__3``)."""
    return re.sub(r"_+\d+$", "", name)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def device_kernels(events: list[dict]) -> dict[str, list[dict]]:
    """Complete events on each device's GPU streams, by device process name."""
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
    kernels = collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        process, thread = processes.get(e["pid"], ""), threads.get((e["pid"], e.get("tid")), "")
        if process.startswith("/device:") and thread.startswith("Stream"):
            kernels[process].append(e)
    return dict(kernels)


def grouped(kernels: list[dict], key, calls: int) -> list[dict]:
    """Kernels grouped by key(name): count and milliseconds per call, mean microseconds; the costliest first."""
    durations = collections.defaultdict(list)
    for e in kernels:
        durations[key(e["name"])].append(e["dur"])
    return [
        {"name": k, "kernels_per_call": len(d) / calls, "ms_per_call": sum(d) / calls / 1e3, "mean_us": sum(d) / len(d)}
        for k, d in sorted(durations.items(), key=lambda item: -sum(item[1]))
    ]


def summarize(trace: Path, calls: int, top: int) -> dict:
    with gzip.open(trace, "rt") if trace.suffix == ".gz" else open(trace) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    per_device = device_kernels(events)
    if not per_device:
        threads = sorted({e["args"]["name"] for e in events if e.get("name") == "thread_name"})
        raise ValueError(f"{trace}: no kernels on a /device: stream (CPU runs record none); threads: {threads}")
    devices = []
    for process, kernels in sorted(per_device.items()):
        intervals = [(e["ts"], e["ts"] + e["dur"]) for e in kernels]
        devices.append(
            {
                "device": process,
                "kernels_per_call": len(kernels) / calls,
                "busy_ms_per_call": union_length(intervals) / calls / 1e3,
                "span_ms_per_call": (max(e for _, e in intervals) - min(s for s, _ in intervals)) / calls / 1e3,
                "categories": grouped(kernels, category, calls),
                "kernels": grouped(kernels, kernel_name, calls)[:top],
            }
        )
    return {"trace": str(trace), "calls": calls, "devices": devices}


def print_summary(summary: dict) -> None:
    for d in summary["devices"]:
        print(
            f"\n{d['device']}: per call {d['kernels_per_call']:.0f} kernels, busy {d['busy_ms_per_call']:.2f} ms"
            f" of a {d['span_ms_per_call']:.2f} ms span ({summary['calls']} calls traced)"
        )
        for title, key in (("category", "categories"), ("kernel", "kernels")):
            print(f"\n| {title} | kernels/call | ms/call | mean us |\n|---|---|---|---|")
            for r in d[key]:
                print(
                    f"| {r['name'][:90]} | {r['kernels_per_call']:.0f} | {r['ms_per_call']:.2f} | {r['mean_us']:.1f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("path", type=Path, help="a perfetto_trace.json.gz or a folder holding one")
    parser.add_argument("--calls", type=int, default=1, help="traced calls (speed.py --profile traces 3)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed by name")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    summary = summarize(find_trace(args.path), args.calls, args.top)
    print(f"{summary['trace']}")
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
