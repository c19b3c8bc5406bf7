"""Training-step and round-trip speed of every model, with each speed option on and off.

    python -m benchmarks.speed --models irn_x4,irrm_l_x4 --variants plain,bf16,pad8+fuse --batch 16 --patch 144
    python -m benchmarks.speed --models irn_x4 --variants pad8 --batch 16,32,64,128,256 --roundtrip ''  # largest batch

One training step is the training loop's own step (`irrm_jax.train.make_train_step`: forward, LR fit to
bicubic, straight-through quantisation, inverse with a fresh z, Charbonnier, z^2, gradient, clip 10, coupled
L2, Adam, norms for the logs), jitted with buffer donation, data parallel over the first `--devices` devices
(batch per device x devices), on a fixed batch already on the devices (so the input pipeline is not timed).
The round trip is jitted downscale (forward + 8-bit quantisation) then upscale (inverse with z ~ N(0, I)) of
one `--roundtrip` image, with the kernel blocks' weights packed once beforehand as `irrm_jax.inference.Rescaler`
does (`irrm_jax.models.with_weight_packs`; `--repack`: packed again in every call, as before).

`--profile DIR` also traces 3 calls of each training step (after the timing) for `benchmarks.profile_summary`.

`--steps-per-call K` runs K steps in one jitted call (`irrm_jax.train.make_multi_step`, as the loop does with
`train.steps_per_call`; step time = call time / K): one dispatch from the host instead of K.

Variants (joined with '+'): plain (float32, TF32 convs on NVIDIA as cuDNN's default), bf16 (bfloat16
sub-networks), pad8 (sub-network channels padded to multiples of 8), fuse (G and H evaluated together),
outward (each new DenseBlock feature map convolved once into all later convs), pallas (the sub-networks, DenseBlocks
or Enhanced Blocks, as Pallas GPU kernels, `irrm_jax.dense_kernels`), cuda (pallas with the kernels in CUDA,
`irrm_jax.cuda_kernels`), split (with cuda: IRRM's last residual unit as its two convolutions' kernels, not one
kernel; for comparison).
'plain' is the project's first version; every option is off in it. Prints a Markdown table and writes JSON;
each phase (compiling, timing) is shown on stderr as it starts, with the seconds since the start.
Timings: median over `--repeats` runs of `--steps` calls each, after a warm-up. Training step: compile time is
tracing, lowering and compiling (ahead of time); step memory is the compiled step's peak device memory per device
(XLA's buffer assignment, so each row is its own configuration's). Round trip: compile time is the first call.
"""

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from irrm_jax.losses import LossConfig, quantize_ste
from irrm_jax.models import build_model, with_weight_packs
from irrm_jax.optimizer import create_optimizer, learning_rate_schedule
from irrm_jax.parallel import batch_sharded, replicated, stacked_batches_sharded
from irrm_jax.train import make_multi_step, make_train_step
from irrm_jax.train_state import create_train_state
from irrm_jax.verify import random_nonzero_params

VARIANT_OPTIONS = {
    "plain": {},
    "bf16": {"compute_dtype": jnp.bfloat16},
    "pad8": {"channel_multiple": 8},
    "fuse": {"fuse_gh": True},
    "outward": {"dense_outward": True},
    "pallas": {"dense_pallas": True},
    "cuda": {"dense_cuda": True},
    "split": {"unit_kernel": False},
}


PROFILED_CALLS = 3  # calls traced by --profile, after the timing
START = time.perf_counter()


def progress(message: str) -> None:
    """One line on stderr, with the seconds since the script started (a configuration can take minutes)."""
    print(f"[{time.perf_counter() - START:7.1f} s] {message}", file=sys.stderr, flush=True)


def model_for(spec: str, variant: str):
    name, scale = spec.rsplit("_x", 1)
    options = {}
    for part in variant.split("+"):
        options.update(VARIANT_OPTIONS[part])
    return build_model(name, int(scale), **options)


def timed(fn, repeats: int, steps: int) -> float:
    """Median seconds per call of fn() over repeats runs of steps calls (blocking once per run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def trace_calls(fn, profile_dir: str) -> None:
    """Traces `PROFILED_CALLS` calls of fn() into profile_dir (jax.profiler, with a Perfetto trace)."""
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
        jax.block_until_ready([fn() for _ in range(PROFILED_CALLS)])


def step_memory_gb(compiled) -> float | None:
    """Peak device memory one compiled call needs (XLA's buffer assignment: arguments, outputs, temporaries)."""
    stats = compiled.memory_analysis()
    peak = getattr(stats, "peak_memory_in_bytes", None) if stats is not None else None
    return peak / 2**30 if peak else None


def bench_train(
    spec: str,
    variant: str,
    batch: int,
    patch: int,
    devices: int,
    repeats: int,
    steps: int,
    steps_per_call: int = 1,
    profile_dir: str | None = None,
) -> dict:
    if devices > jax.device_count():
        raise ValueError(f"{devices} devices asked for, {jax.device_count()} available")
    model = model_for(spec, variant)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    optimizer = create_optimizer()
    state = create_train_state(model, optimizer, 0, replicated(mesh))
    random_params = random_nonzero_params(state.params, 0, gain=0.1)  # zero last convs would flatter the timing
    state = state.replace(params=jax.device_put(random_params, replicated(mesh)))
    step = make_train_step(
        model, optimizer, learning_rate_schedule(2e-4, (100_000,), 0.5), LossConfig(float(model.scale**2)), mesh
    )
    global_batch = batch * devices
    hr = np.random.default_rng(0).uniform(size=(global_batch, patch, patch, 3)).astype(np.float32)
    if steps_per_call > 1:
        step = make_multi_step(step, mesh)
        hr = jax.device_put(np.stack([hr] * steps_per_call), stacked_batches_sharded(mesh))
    else:
        hr = jax.device_put(hr, batch_sharded(mesh))
    name = f"{spec} {variant} step, batch {batch} x {devices} device(s)"
    progress(f"{name}: compiling")
    start = time.perf_counter()
    compiled = step.lower(state, hr).compile()
    compile_s = time.perf_counter() - start
    progress(f"{name}: compiled in {compile_s:.1f} s; timing {repeats} x {steps} calls")
    holder = [state]

    def one():
        holder[0], metrics = compiled(holder[0], hr)
        return metrics["loss"]

    for _ in range(3):
        one()
    seconds = timed(one, repeats, steps) / steps_per_call
    if profile_dir:
        trace_calls(one, profile_dir)
    return {
        "model": spec,
        "variant": variant,
        "devices": devices,
        "batch_per_device": batch,
        "patch": patch,
        "steps_per_call": steps_per_call,
        "step_ms": 1e3 * seconds,
        "patches_per_s": global_batch / seconds,
        "compile_s": compile_s,
        "final_loss": float(np.ravel(one())[-1]),
        "step_memory_gb": step_memory_gb(compiled),
    }


def bench_roundtrip(
    spec: str,
    variant: str,
    height: int,
    width: int,
    repeats: int,
    steps: int,
    profile_dir: str | None = None,
    repack: bool = False,
) -> dict:
    model = model_for(spec, variant)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, height, width, 3)), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x[:, :8, :8])["params"]
    variables = {"params": random_nonzero_params(shapes, 0, gain=0.1)}
    if not repack:
        variables = with_weight_packs(model, variables)

    @jax.jit
    def downscale(variables, x):
        return quantize_ste(model.apply(variables, x)[0])

    @jax.jit
    def upscale(variables, lr, key):
        z = jax.random.normal(key, lr.shape[:-1] + (model.config.out_channels - 3,))
        return model.apply(variables, lr, z, method=model.inverse)

    key = jax.random.key(0)

    def roundtrip():
        return upscale(variables, downscale(variables, x), key)

    name = f"{spec} {variant} round trip, {height}x{width}"
    progress(f"{name}: first call (compiles)")
    start = time.perf_counter()
    jax.block_until_ready(roundtrip())
    compile_s = time.perf_counter() - start
    progress(f"{name}: first call took {compile_s:.1f} s; timing {repeats} x {steps} calls")
    seconds = timed(roundtrip, repeats, steps)
    if profile_dir:
        trace_calls(roundtrip, profile_dir)
    return {"model": spec, "variant": variant, "roundtrip_ms": 1e3 * seconds, "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default="irn_x4")
    parser.add_argument("--variants", default="plain,bf16,pad8+fuse,bf16+pad8+fuse")
    parser.add_argument(
        "--batch", default="16", help="patches per device; a comma-separated list stops at the first that does not fit"
    )
    parser.add_argument("--patch", type=int, default=144)
    parser.add_argument("--devices", default="1", help="comma-separated device counts for the train step")
    parser.add_argument("--roundtrip", default="1356x2040", help="HxW of the round-trip image ('' to skip)")
    parser.add_argument("--no-train", action="store_true", help="time only the round trip")
    parser.add_argument(
        "--repack", action="store_true", help="round trip: pack the kernel blocks' weights in every call, not once"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--steps-per-call", type=int, default=1, help="training steps per jitted call (lax.scan; step time = call / K)"
    )
    parser.add_argument("--label", default="", help="appended to the variant name (e.g. the XLA_FLAGS in use)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--profile",
        help=f"trace {PROFILED_CALLS} training-step calls of each configuration into"
        f" PROFILE/<model>_<variant>_b<batch>_d<devices>, and {PROFILED_CALLS} round trips into"
        " PROFILE/<model>_<variant>_roundtrip (jax.profiler; summarise with benchmarks.profile_summary)",
    )
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    results = []
    for spec in args.models.split(","):
        for variant in args.variants.split(","):
            for devices in (int(d) for d in args.devices.split(",")):
                for i, batch in enumerate(int(b) for b in args.batch.split(",")):
                    r = {"model": spec, "devices": devices, "batch_per_device": batch}
                    if not args.no_train:
                        try:
                            profile_dir = args.profile and f"{args.profile}/{spec}_{variant}_b{batch}_d{devices}"
                            r = bench_train(
                                spec,
                                variant,
                                batch,
                                args.patch,
                                devices,
                                args.repeats,
                                args.steps,
                                args.steps_per_call,
                                profile_dir,
                            )
                        except Exception as error:  # jax's runtime error type moved between versions
                            if "RESOURCE_EXHAUSTED" not in str(error):
                                raise
                            r["out_of_memory"] = True
                    r["variant"] = variant + (f", {args.steps_per_call} steps/call" if args.steps_per_call > 1 else "")
                    r["variant"] += f" ({args.label})" if args.label else ""
                    if args.roundtrip and devices == 1 and i == 0:
                        h, w = (int(v) for v in args.roundtrip.split("x"))
                        profile_dir = args.profile and f"{args.profile}/{spec}_{variant}_roundtrip"
                        roundtrip = bench_roundtrip(
                            spec, variant, h, w, args.repeats, args.steps, profile_dir, args.repack
                        )
                        r["roundtrip_ms"] = roundtrip["roundtrip_ms"]
                        r["roundtrip_weights"] = "packed every call" if args.repack else "packed once"
                    results.append(r)
                    print(json.dumps(r), flush=True)
                    if args.json:  # rewritten after every result: a run cut short keeps what it measured
                        report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "results": results}
                        with open(args.json, "w") as f:
                            json.dump(report, f, indent=1)
                    if r.get("out_of_memory"):
                        break  # larger batches will not fit either
    print(
        "\n| model | variant | devices | batch/device | step ms | patches/s | compile s | memory GB | round trip ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cell = lambda key, fmt, r=r: format(r[key], fmt) if r.get(key) is not None else "-"  # noqa: E731
        step = "out of memory" if r.get("out_of_memory") else cell("step_ms", ".1f")
        print(
            f"| {r['model']} | {r['variant']} | {r['devices']} | {cell('batch_per_device', 'd')} | {step} | "
            f"{cell('patches_per_s', '.0f')} | {cell('compile_s', '.1f')} | {cell('step_memory_gb', '.1f')} | "
            f"{cell('roundtrip_ms', '.1f')}{' (weights packed every call)' if args.repack else ''} |"
        )


if __name__ == "__main__":
    main()
