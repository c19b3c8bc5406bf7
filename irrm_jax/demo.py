"""The main job in one command: train a small IRRM on sample photographs, evaluate it against bicubic, report.

    python -m irrm_jax.demo [--steps 600] [--out results/demo]        (or: bash scripts/demo.sh)

Needs no download and no data folder: the photographs are those scikit-image ships (`skimage.data`). Nine
(astronaut, chelsea, rocket, immunohistochemistry, hubble_deep_field, retina and the brick, grass and gravel
textures) are written to ``<out>/images/train`` and train an IRRM-S x2 (``configs/demo.py``) with
`irrm_jax.train.train_and_evaluate`; two held out (coffee, and camera, a grayscale photograph) are written to
``<out>/images/test`` and scored by `irrm_jax.evaluate.evaluate` against bicubic, with z at T = 0, 0.5 and 1.

The results folder holds ``summary.md`` / ``summary.json`` / ``per_image.csv`` (the scores), ``heldout/
comparison.png`` (crops: HR, LR, bicubic, ours), ``psnr_vs_temperature.png``, the 8-bit LRs and the reconstructions,
``workdir/`` (checkpoint, metrics.jsonl, TensorBoard events) and ``images/``. A second run in the same folder starts
again from scratch; a folder that the demo did not create is never written into.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from irrm_jax.datasets import ArrayImageSource
from irrm_jax.evaluate import evaluate, markdown_table
from irrm_jax.inference import load_model_and_params

TRAIN_IMAGES = (
    "astronaut",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "brick",
    "grass",
    "gravel",
)
"""scikit-image sample images used for training."""

TEST_IMAGES = ("coffee", "camera")
"""scikit-image sample photographs held out for evaluation (camera is grayscale)."""

DEFAULT_OUT = "results/demo"
_MARKER = ".irrm_jax_demo"


def sample_image(name: str) -> np.ndarray:
    """A scikit-image sample image as uint8 (H, W, 3) RGB or (H, W) gray."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {image.dtype}, not uint8.")
    return image[..., :3] if image.ndim == 3 else image


def write_images(folder: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """Writes the named sample images as PNGs into ``folder``; returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [sample_image(n) for n in names]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(folder / f"{name}.png")
    return images


def _demo_config(train_folder: Path, steps: int | None, data_dir: Path):
    try:
        from configs import demo as demo_config
    except ImportError:  # run from outside the repository: the configs folder sits next to the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from configs import demo as demo_config
    config = demo_config.get_config(str(train_folder))
    if steps is not None:
        demo_config.set_steps(config, steps)
    config.data.data_dir = str(data_dir)
    return config


def _prepare_output(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
        raise FileExistsError(f"{out} exists and was not made by the demo; choose another --out.")
    for sub in ("workdir", "tfds", "heldout"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("made by python -m irrm_jax.demo; rerunning the demo replaces this folder's contents\n")


def _center_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return image
    top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
    return image[top : top + size, left : left + size]


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    steps: int | None = None,
    draws: int = 3,
    eval_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains on the sample images, evaluates on the held-out ones and writes the results folder.

    Args:
      out: the results folder (created; a folder the demo did not create is refused).
      steps: training steps (default: ``configs/demo.py``'s).
      draws: draws of z per image for T > 0.
      eval_size: centre-crop the held-out images to at most this many pixels a side (None: whole images).
      progress: show progress bars.

    Returns:
      The evaluation summary, with ``training`` (steps, seconds) added.

    Raises:
      FileExistsError: ``out`` is a non-empty folder the demo did not create.
    """
    from irrm_jax.train import train_and_evaluate

    out = Path(out)
    _prepare_output(out)
    train_folder = out / "images" / "train"
    write_images(train_folder, TRAIN_IMAGES)
    test_images = write_images(out / "images" / "test", TEST_IMAGES)
    config = _demo_config(train_folder, steps, out / "tfds")
    config.train.progress_bar = progress
    print(
        f"Training {config.model.name} x{config.model.scale} for {config.train.num_steps} steps on "
        f"{len(TRAIN_IMAGES)} sample images ({train_folder}) ..."
    )
    start = time.perf_counter()
    train_and_evaluate(config, out / "workdir")
    train_seconds = time.perf_counter() - start
    print(f"Trained in {train_seconds:.0f} s. Evaluating on the held-out {', '.join(TEST_IMAGES)} ...")
    model, params, name, _ = load_model_and_params(out / "workdir")
    held_out = ArrayImageSource(
        [_center_crop(image, eval_size) for image in test_images], list(TEST_IMAGES), description="held-out photos"
    )
    training = {"steps": int(config.train.num_steps), "seconds": round(train_seconds, 1), "images": TRAIN_IMAGES}
    return evaluate(
        model,
        params,
        {"heldout": held_out},
        out,
        draws=draws,
        progress=progress,
        model_name=name,
        checkpoint=str(out / "workdir"),
        extra={"training": training},
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m irrm_jax.demo``: runs the demo, prints the table and where the results are."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="training steps (default: configs/demo.py's)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument("--draws", type=int, default=3, help="draws of z per held-out image for T > 0")
    parser.add_argument("--eval-size", type=int, help="centre-crop held-out images to this side (default: whole)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax/tfds notices about read-only restores etc.
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    start = time.perf_counter()
    try:
        summary = run_demo(
            args.out, steps=args.steps, draws=args.draws, eval_size=args.eval_size, progress=not args.no_progress
        )
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    print()
    print(markdown_table(summary))
    print(
        f"\nDone in {time.perf_counter() - start:.0f} s (training {summary['training']['seconds']:.0f} s). Results in "
        f"{out}:\n  summary.md, summary.json, per_image.csv, heldout/comparison.png, psnr_vs_temperature.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
