"""Numerical invertibility check, as a library function and a command.

    python -m irrm_jax.verify --model irrm_m --scale 4 [--images DIR]
    python -m irrm_jax.verify --checkpoint WORKDIR_OR_IRN_PTH [--images DIR]

reports max and mean |x - inverse(forward(x))| in float32 (convolutions at full precision, and at the hardware's
default precision, e.g. TF32 on NVIDIA GPUs) and float64 on given or random images, with trained weights or
(without a checkpoint) random non-zero weights, and exits with status 1 when an error exceeds its tolerance.
At initialisation every coupling is the identity, so checks there prove nothing: hence the random weights.
``--sensitivity`` adds the reconstruction's PSNR-Y from the 8-bit LR with the forward's own z, z = 0 and
z ~ N(0, I), and its change under 0.01 of noise on z (`latent_sensitivity`).
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax.inference import add_dense_pallas_flag
from irrm_jax.models import VARIANTS, InvertibleRescaler, RescalerConfig, model_config, with_dense_cuda

FLOAT32_TOLERANCE = 1e-5  # max abs error on images in [0, 1], convolutions at full float32 precision
FLOAT64_TOLERANCE = 1e-12
# The hardware's default convolution precision (TF32 on NVIDIA GPUs, bfloat16 passes on TPUs) rounds the inputs
# of F to about 3 significant digits, so a one-ulp difference between x2 and its reconstruction can flip that
# rounding: rare errors near 1e-3 on trained models (7.6e-4 measured on an H100). Half an 8-bit level is the
# bound that matters there: below it the 8-bit reconstruction is unchanged.
DEFAULT_PRECISION_TOLERANCE = 0.5 / 255
PRECISIONS = ("float32", "float32 default precision", "float64")


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


SENSITIVITY_CASES = (
    "8-bit LR, own z",
    "8-bit LR, z = 0 (T = 0)",
    "8-bit LR, z ~ N(0, I) (T = 1)",
    "exact LR, own z + 0.01 N(0, I)",
)


def latent_sensitivity(model: InvertibleRescaler, params: Any, images: list[np.ndarray], seed: int = 0) -> dict:
    """How the reconstruction depends on what the inverse is given, beside the exact round trip.

    For each image x (HxWx3 in [0, 1], sides divisible by the scale) with ``(y, z) = forward(x)``, the PSNR-Y
    (``scale`` pixels shaved, 8-bit) of ``inverse(y', z')`` for the SENSITIVITY_CASES: the 8-bit LR with the
    forward's own z (what storing the LR alone costs if z were known), with z = 0 and with z ~ N(0, I) (what
    upscaling does), and the exact LR with its own z plus 0.01 N(0, I) (how sharply the inverse depends on z).

    Returns:
      ``{case: mean PSNR-Y in dB}`` and ``'z_rms'``, the root mean square of the forward's z over the images.
    """
    from irrm_jax.losses import quantize  # the training's 8-bit quantisation
    from irrm_jax.metrics import psnr_y, to_uint8  # the evaluation's metric and 8-bit conversion

    variables = {"params": params}
    forward = jax.jit(lambda x: model.apply(variables, x))
    inverse = jax.jit(lambda y, z: model.apply(variables, y, z, method=model.inverse))
    scores: dict[str, list[float]] = {case: [] for case in SENSITIVITY_CASES}
    squares, count = 0.0, 0
    for i, image in enumerate(images):
        x = jnp.asarray(image[None], jnp.float32)
        y, z = forward(x)
        y8 = quantize(y)
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), z.shape)
        inputs = (y8, z), (y8, jnp.zeros_like(z)), (y8, noise), (y, z + 0.01 * noise)
        hr = to_uint8(image)
        for case, (y_in, z_in) in zip(SENSITIVITY_CASES, inputs, strict=True):
            scores[case].append(psnr_y(to_uint8(np.asarray(inverse(y_in, z_in))[0]), hr, model.config.scale))
        squares, count = squares + float(jnp.sum(jnp.square(z))), count + z.size
    return {case: float(np.mean(v)) for case, v in scores.items()} | {"z_rms": (squares / count) ** 0.5}


def _load_images(folder: Path, scale: int, max_size: int) -> list[np.ndarray]:
    from irrm_jax.images import list_image_files, read_image

    out = []
    for path in list_image_files(folder):
        img = read_image(path).pixels.astype(np.float64) / 255.0
        h, w = (min(d, max_size) // scale * scale for d in img.shape[:2])
        out.append(img[:h, :w])
    return out


def verify(
    config: RescalerConfig,
    params: Any | None = None,
    images: list[np.ndarray] | None = None,
    seed: int = 0,
    size: int = 64,
    batch: int = 2,
    dense_pallas: bool = False,
    dense_cuda: bool = False,
) -> dict[str, dict[str, float]]:
    """Round-trip errors in float32 and float64 for one model.

    Args:
      config: the architecture (`irrm_jax.models.model_config(name, scale)`).
      params: trained parameters; None draws random non-zero ones.
      images: HxWx3 float arrays in [0, 1] with sides divisible by scale; None draws random images.
      seed: for the random weights and images.
      size, batch: size and count of the random images.
      dense_pallas: run the sub-networks as Pallas kernels (`irrm_jax.dense_kernels`, `enhanced_kernels`) instead of
        XLA convolutions.
      dense_cuda: ``dense_pallas`` with the kernels in CUDA and each coupling's G and H as one call
        (`irrm_jax.models.with_dense_cuda`, as `irrm_jax.inference` runs them) in the float32 passes (the float64
        one uses the Pallas kernels: the CUDA kernels have no float64).

    Returns:
      For each of PRECISIONS: {'max': ..., 'mean': ...}, errors over all images. 'float32' runs the
      convolutions at full float32 precision, 'float32 default precision' at the hardware's default (the same on
      CPUs; TF32 on NVIDIA GPUs; bfloat16 passes on TPUs).
    """
    if images is None:
        rng = np.random.default_rng(seed)
        images = list(rng.uniform(size=(batch, size, size, 3)))
    if params is None:
        model = InvertibleRescaler(config)
        x = jax.ShapeDtypeStruct((1, 2 * config.scale, 2 * config.scale, 3), jnp.float32)
        params = random_nonzero_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"], seed)
    results = {}
    for precision in PRECISIONS:
        dtype = precision.split()[0]
        matmul = "default" if "default" in precision else "highest"
        with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision(matmul):
            cuda = dense_cuda and dtype != "float64"
            model = InvertibleRescaler(config, compute_dtype=jnp.dtype(dtype), dense_pallas=dense_pallas or dense_cuda)
            model = with_dense_cuda(model) if cuda else model
            p = jax.tree.map(lambda a, d=dtype: jnp.asarray(a, d), params)
            errors = [roundtrip_error(model, p, jnp.asarray(img[None], dtype)) for img in images]
        results[precision] = {
            "max": max(e[0] for e in errors),
            "mean": float(np.mean([e[1] for e in errors])),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 when the float32 error is within tolerance)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", choices=list(VARIANTS), help="variant (without a checkpoint)")
    parser.add_argument("--scale", type=int, help="scale (without a checkpoint)")
    parser.add_argument(
        "--checkpoint", type=Path, help="training workdir or step folder, or official IRN .pth/.npz (sets the model)"
    )
    parser.add_argument("--images", type=Path, help="folder of images (default: random images)")
    parser.add_argument("--max-size", type=int, default=256, help="crop images to at most this size")
    parser.add_argument("--size", type=int, default=64, help="side of the random images")
    parser.add_argument("--batch", type=int, default=2, help="number of random images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sensitivity", action="store_true", help="also report the reconstruction's PSNR-Y from an 8-bit LR and z"
    )
    add_dense_pallas_flag(parser)
    parser.add_argument("--tolerance", type=float, default=FLOAT32_TOLERANCE, help="float32 (full precision)")
    parser.add_argument(
        "--default-tolerance",
        type=float,
        default=DEFAULT_PRECISION_TOLERANCE,
        help="float32 at the hardware's default conv precision (half an 8-bit level)",
    )
    args = parser.parse_args(argv)
    if args.checkpoint:
        from irrm_jax.inference import load_model_and_params

        try:
            model, params, name, _ = load_model_and_params(args.checkpoint, args.model, args.scale)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        config, weights = model.config, f"checkpoint {args.checkpoint}"
    else:
        if not args.model or not args.scale:
            parser.error("give --model and --scale, or a --checkpoint")
        try:
            config = model_config(args.model, args.scale)
        except ValueError as e:
            parser.error(str(e))
        name, params, weights = args.model, None, "random non-zero weights"
    images = _load_images(args.images, config.scale, args.max_size) if args.images else None
    results = verify(config, params, images, args.seed, args.size, args.batch, args.dense_pallas, args.dense_cuda)
    source = f"{len(images)} images from {args.images}" if images else f"{args.batch} random images"
    blocks = ", CUDA sub-network kernels" if args.dense_cuda else ", Pallas sub-network kernels"
    print(f"{name} x{config.scale}, {weights}, {source}" + (blocks if args.dense_pallas or args.dense_cuda else ""))
    print("| precision | max abs error | mean abs error | tolerance |\n|---|---|---|---|")
    tolerances = dict(zip(PRECISIONS, (args.tolerance, args.default_tolerance, FLOAT64_TOLERANCE), strict=True))
    failed = []
    for precision, r in results.items():
        print(f"| {precision} | {r['max']:.3g} | {r['mean']:.3g} | {tolerances[precision]:.3g} |")
        if r["max"] > tolerances[precision]:
            failed.append(precision)
    print(f"max error ABOVE tolerance in: {', '.join(failed)}" if failed else "all max errors within tolerance")
    if args.sensitivity:
        model = InvertibleRescaler(config)
        if params is None:
            x = jax.ShapeDtypeStruct((1, 2 * config.scale, 2 * config.scale, 3), jnp.float32)
            params = random_nonzero_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"], args.seed)
        if images is None:
            images = list(np.random.default_rng(args.seed).uniform(size=(args.batch, args.size, args.size, 3)))
        sensitivity = latent_sensitivity(model, params, images, args.seed)
        print(f"\nreconstruction PSNR-Y (dB), the forward's z has rms {sensitivity.pop('z_rms'):.3g}:")
        print("| inverse given | PSNR-Y |\n|---|---|")
        for case, value in sensitivity.items():
            print(f"| {case} | {value:.2f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
