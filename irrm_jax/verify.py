"""Numerical invertibility check, as a library function and a command.

    python -m irrm_jax.verify --model irrm_m --scale 4 [--checkpoint PATH] [--images DIR]

reports max and mean |x - inverse(forward(x))| in float32 and float64 on given or random images, with trained
weights or (without a checkpoint) random non-zero weights, and exits with status 1 when the float32 error exceeds
the tolerance. At initialisation every coupling is the identity, so checks there prove nothing: hence the random
weights.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax.models import VARIANTS, InvertibleRescaler, build_model

FLOAT32_TOLERANCE = 1e-5  # max abs error on images in [0, 1]
FLOAT64_TOLERANCE = 1e-12


def random_nonzero_params(params: Any, seed: int, gain: float = 0.5) -> Any:
    """Random values for every parameter: kernels N(0, gain^2 / fan_in), biases N(0, 0.01^2).

    Gives every sub-network a non-zero output (unlike the zero-initialised last convolutions), so that a round
    trip exercises every coupling. With the default gain an IRN's LR stays image-like (about [0, 1.1], some 0.3
    away from the Haar LL band) and |z| of order 1, as for a trained model; gain 1 makes the network chaotic
    (LR in [-5, 5]), which no trained model is. `params` may hold arrays or `jax.ShapeDtypeStruct`s; values are
    drawn with numpy (no compilation).
    """
    rng = np.random.default_rng(seed)

    def draw(leaf):
        std = gain / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.01
        return jnp.asarray(std * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree.map(draw, params)


def roundtrip_error(model: InvertibleRescaler, params: Any, images: jax.Array) -> tuple[float, float]:
    """Max and mean absolute error of inverse(forward(images)), in the images' dtype."""

    @jax.jit
    def roundtrip(p, x):
        lr, z = model.apply({"params": p}, x)
        return model.apply({"params": p}, lr, z, method=model.inverse)

    err = jnp.abs(roundtrip(params, images) - images)
    return float(err.max()), float(err.mean())


def _load_images(folder: Path, scale: int, max_size: int) -> list[np.ndarray]:
    from irrm_jax.images import list_image_files, read_image

    out = []
    for path in list_image_files(folder):
        img = read_image(path).pixels.astype(np.float64) / 255.0
        h, w = (min(d, max_size) // scale * scale for d in img.shape[:2])
        out.append(img[:h, :w])
    return out


def load_params(path: Path) -> Any:
    """Parameters from a training checkpoint directory or an official IRN state dict (.pth or .npz)."""
    if path.suffix in (".pth", ".npz"):
        from irrm_jax.convert import load_official_irn

        return load_official_irn(path)
    from irrm_jax.checkpointing import restore_params

    return restore_params(path)


def verify(
    name: str,
    scale: int,
    params: Any | None = None,
    images: list[np.ndarray] | None = None,
    seed: int = 0,
    size: int = 64,
    batch: int = 2,
) -> dict[str, dict[str, float]]:
    """Round-trip errors in float32 and float64 for one model.

    Args:
      name, scale: the variant.
      params: trained parameters; None draws random non-zero ones.
      images: HxWx3 float arrays in [0, 1] with sides divisible by scale; None draws random images.
      seed: for the random weights and images.
      size, batch: size and count of the random images.

    Returns:
      {'float32': {'max': ..., 'mean': ...}, 'float64': {...}}: errors over all images.
    """
    if images is None:
        rng = np.random.default_rng(seed)
        images = list(rng.uniform(size=(batch, size, size, 3)))
    if params is None:
        model = build_model(name, scale)
        x = jax.ShapeDtypeStruct((1, 2 * scale, 2 * scale, 3), jnp.float32)
        params = random_nonzero_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"], seed)
    results = {}
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            model = build_model(name, scale, compute_dtype=jnp.dtype(dtype))
            p = jax.tree.map(lambda a, d=dtype: jnp.asarray(a, d), params)
            errors = [roundtrip_error(model, p, jnp.asarray(img[None], dtype)) for img in images]
        results[dtype] = {
            "max": max(e[0] for e in errors),
            "mean": float(np.mean([e[1] for e in errors])),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 when the float32 error is within tolerance)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", required=True, choices=list(VARIANTS))
    parser.add_argument("--scale", required=True, type=int)
    parser.add_argument("--checkpoint", type=Path, help="training workdir/checkpoint or IRN .pth/.npz")
    parser.add_argument("--images", type=Path, help="folder of images (default: random images)")
    parser.add_argument("--max-size", type=int, default=256, help="crop images to at most this size")
    parser.add_argument("--size", type=int, default=64, help="side of the random images")
    parser.add_argument("--batch", type=int, default=2, help="number of random images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=FLOAT32_TOLERANCE)
    args = parser.parse_args(argv)
    if args.model not in VARIANTS or args.scale not in VARIANTS[args.model]:
        parser.error(f"{args.model} has scales {list(VARIANTS[args.model])}, not {args.scale}")
    params = load_params(args.checkpoint) if args.checkpoint else None
    images = _load_images(args.images, args.scale, args.max_size) if args.images else None
    results = verify(args.model, args.scale, params, images, args.seed, args.size, args.batch)
    weights = f"checkpoint {args.checkpoint}" if params is not None else "random non-zero weights"
    source = f"{len(images)} images from {args.images}" if images else f"{args.batch} random images"
    print(f"{args.model} x{args.scale}, {weights}, {source}")
    print("| precision | max abs error | mean abs error |\n|---|---|---|")
    for dtype, r in results.items():
        print(f"| {dtype} | {r['max']:.3g} | {r['mean']:.3g} |")
    ok = results["float32"]["max"] <= args.tolerance
    print(f"float32 max error {'within' if ok else 'ABOVE'} tolerance {args.tolerance:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
