"""Time single 3x3 convolutions at the shapes an IRN x4 training step uses, against their memory floor.

    python -m benchmarks.conv_shapes [--batch 16] [--patch 144]

For each (input channels -> output channels) of a DenseBlock at the H/2 level, prints forward and
forward+backward time in float32 (TF32 on NVIDIA) and bfloat16, and the time one pass over the input and
output bytes would take at 3 TB/s, so the gap between a conv and its floor is visible.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


REPEATS = 20  # convolutions per dispatch, so Python dispatch (tens of us) does not dominate


def bench(fn, *args, n=10):
    """Microseconds per convolution: fn runs REPEATS of them inside one jitted call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / (n * REPEATS) * 1e6


def repeated(step):
    """Sums step(x, w_i) over a stack of REPEATS kernels with a scan (one dispatch, REPEATS kernels)."""

    def run(x, ws):
        return jax.lax.scan(lambda acc, w: (acc + step(x, w), None), jnp.zeros((), jnp.float32), ws)[0]

    return jax.jit(run)


def fwd_bwd(x, w):
    """Forward and both gradients (data and weights) of one convolution, reduced to a scalar."""
    grads = jax.grad(lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32) ** 2), (0, 1))(x, w)
    return sum(jnp.sum(g.astype(jnp.float32)) for g in grads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=144)
    args = parser.parse_args()
    side = args.patch // 2
    rng = np.random.default_rng(0)
    print(f"{jax.devices()[0].device_kind}, input {args.batch}x{side}x{side}xC")
    print("| C_in -> C_out | dtype | fwd us | fwd+bwd us | memory floor us (fwd) |")
    print("|---|---|---|---|---|")
    for c_in, c_out in [(3, 32), (35, 32), (67, 32), (99, 32), (131, 9), (9, 32), (137, 3), (40, 32), (136, 16)]:
        for dtype in (jnp.float32, jnp.bfloat16):
            x = jnp.asarray(rng.standard_normal((args.batch, side, side, c_in)), dtype)
            w = jnp.asarray(rng.standard_normal((REPEATS, 3, 3, c_in, c_out)) * 0.05, dtype)
            fwd = repeated(lambda x, w: jnp.sum(conv(x, w).astype(jnp.float32)))
            grad = repeated(fwd_bwd)
            floor = x.size * x.dtype.itemsize + x.size // c_in * c_out * x.dtype.itemsize
            print(
                f"| {c_in} -> {c_out} | {jnp.dtype(dtype).name} | {bench(fwd, x, w):.0f} | {bench(grad, x, w):.0f} | "
                f"{floor / 3e12 * 1e6:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
