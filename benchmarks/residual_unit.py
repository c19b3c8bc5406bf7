"""Time IRRM's residual unit on the CUDA kernels: the one kernel (`cuda_kernels.residual_unit`) against its two
convolutions, at G and H's shape at the 2040x1356 round trip's first level (2 members of 1020x678, vmapped).

    python -m benchmarks.residual_unit [--height 678] [--width 1020] [--members 2]

Prints microseconds a call (the best of 3 runs of 40 calls, jitted) for float32 (TF32 products) and bfloat16, 32
and 48 channels, as a Markdown table and as JSON. The two convolutions read h's TF32 copy made beforehand, as the
model's conv_in writes it. NVIDIA GPUs of compute capability 9.0 only (the kernels'); elsewhere a clear error.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax import cuda_kernels
from irrm_jax import dense_kernels as dk

RUNS, CALLS = 3, 40


def unit_packs(kernels: jax.Array, biases: jax.Array) -> dk.WeightPack:
    """Each member's conv_a (layer 0) and conv_b (layer 1), packed as the CUDA kernels read them
    (`dense_kernels.pack_weights`): kernels (members, 2, 9, c, c), biases (members, 2, c)."""

    def pack(k, b):
        return dk.pack_weights(cuda_kernels.CUDA, ((k[0],), (k[1],)), (b[0], b[1]))

    return jax.vmap(pack)(kernels, biases)


def unit(layout: dk.FlatLayout, one_kernel: bool):
    """The unit on (members, rows, c) flat h, its TF32 operand and (members,) packs, jitted."""

    def one(h, h_operand, pack):
        if one_kernel:
            return cuda_kernels.residual_unit(h, pack, (0, 1), layout)
        hidden = cuda_kernels.conv([h_operand], pack, ["w0.0"], layout, "bias_leaky", "b0")
        return cuda_kernels.conv([hidden], pack, ["w1.0"], layout, "bias_residual_leaky", "b1", residual=h)

    return jax.jit(jax.vmap(one))


def microseconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(CALLS):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / CALLS)
    return 1e6 * best


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--height", type=int, default=678)
    parser.add_argument("--width", type=int, default=1020)
    parser.add_argument("--members", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        cuda_kernels.computes(jnp.float32)
    except (ValueError, RuntimeError) as error:
        parser.error(f"the residual-unit kernel needs the CUDA kernels: {error}")
    if args.width < cuda_kernels.UNIT_MIN_WIDTH:
        parser.error(f"--width must be at least {cuda_kernels.UNIT_MIN_WIDTH} (the kernel's rows), got {args.width}")
    layout = dk.FlatLayout(1, args.height, args.width)
    rng = np.random.default_rng(0)
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16):
        for c in cuda_kernels.UNIT_WIDTHS:
            image = rng.normal(size=(args.members, 1, args.height, args.width, c))
            h = jnp.stack([dk.to_flat(jnp.asarray(x, dtype), layout, c) for x in image])
            kernels = jnp.asarray(rng.normal(size=(args.members, 2, 9, c, c)) * 0.1, dtype)
            packs = unit_packs(kernels, jnp.asarray(rng.normal(size=(args.members, 2, c)), dtype))
            h_operand = cuda_kernels.tf32_operand(h)
            times = {
                name: microseconds(unit(layout, name == "one kernel"), h, h_operand, packs)
                for name in ("one kernel", "two convolutions")
            }
            rows.append({"dtype": jnp.dtype(dtype).name, "channels": c, **{f"{k} us": v for k, v in times.items()}})
    print(f"| {args.members} x {args.height}x{args.width} | channels | one kernel | two convolutions |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['channels']} | {r['one kernel us']:.1f} us | {r['two convolutions us']:.1f} us |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
