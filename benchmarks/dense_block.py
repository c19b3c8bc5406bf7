"""Time one IRN DenseBlock, forward and forward + backward, as XLA convolutions and as Pallas kernels.

    python -m benchmarks.dense_block [--batch 16] [--patch 144] [--json out.json]

The shapes are IRN x4's sub-networks at batch 16 of 144x144 patches: F (9 -> 3) and G/H (3 -> 9) at H/2,
F (45 -> 3) and G/H (3 -> 45) at H/4. Rows: plain (float32 convolutions, TF32 on NVIDIA), pad8 (channels padded
to multiples of 8, the configs' default), pallas (`irrm_jax.dense_kernels`), each also in bfloat16. Each row also
gives the largest difference from float32 plain in the output and in the gradients (per array, relative to its
largest value).
Timings: median of 5 runs of 10 calls after a warm-up, microseconds per call.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.speed import timed
from irrm_jax.subnets import DenseBlock

VARIANTS = {
    "plain": dict(),
    "pad8": dict(channel_multiple=8),
    "pallas": dict(pallas=True),
}


def median_us(fn, *args) -> float:
    """Median microseconds per call of fn(*args) (5 runs of 10 calls, after a warm-up), timed like speed.py."""
    jax.block_until_ready(fn(*args))
    return 1e6 * timed(lambda: fn(*args), repeats=5, steps=10)


def rel_diff(a, b) -> float:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30)) for x, y in leaves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=144)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = [(2, 9, 3), (2, 3, 9), (4, 45, 3), (4, 3, 45)]  # (downscaling factor, c_in, features)
    print(f"{jax.devices()[0].device_kind}, batch {args.batch} of {args.patch}x{args.patch}")
    print("| level | c_in -> features | dtype | variant | fwd us | fwd+bwd us | out diff | grad diff |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for factor, c_in, features in shapes:
        side = args.patch // factor
        x = jnp.asarray(rng.uniform(-1, 1, (args.batch, side, side, c_in)), jnp.float32)
        params = DenseBlock(features).init(jax.random.PRNGKey(0), x)
        params = jax.tree_util.tree_map(lambda p: p + 0.02 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        proj = jnp.asarray(rng.standard_normal((args.batch, side, side, features)), jnp.float32)
        reference = None
        for dtype in (jnp.float32, jnp.bfloat16):
            for name, options in VARIANTS.items():
                block = DenseBlock(features, dtype=dtype, **options)
                fwd = jax.jit(lambda p, x, block=block: block.apply(p, x))
                grad = jax.jit(
                    jax.grad(
                        lambda p, x, block=block, proj=proj: jnp.sum(block.apply(p, x).astype(jnp.float32) * proj),
                        argnums=(0, 1),
                    )
                )
                out, grads = fwd(params, x).astype(jnp.float32), grad(params, x)
                if reference is None:
                    reference = (out, grads)
                row = dict(
                    level=f"H/{factor}",
                    c_in=c_in,
                    features=features,
                    dtype=jnp.dtype(dtype).name,
                    variant=name,
                    fwd_us=median_us(fwd, params, x),
                    fwd_bwd_us=median_us(grad, params, x),
                    out_diff=rel_diff(out, reference[0]),
                    grad_diff=rel_diff(grads, reference[1]),
                )
                rows.append(row)
                print(
                    f"| {row['level']} | {c_in} -> {features} | {row['dtype']} | {name} | {row['fwd_us']:.0f} | "
                    f"{row['fwd_bwd_us']:.0f} | {row['out_diff']:.1e} | {row['grad_diff']:.1e} |",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
