"""``irrm-rescale``: downscale images to 8-bit LR PNGs, upscale them back, or both, with a trained model.

    irrm-rescale down      photos/ lr/      --checkpoint WORKDIR
    irrm-rescale up        lr/ restored/    --checkpoint WORKDIR [--temperature 1.0] [--seed 0]
    irrm-rescale roundtrip photo.png out.png --checkpoint IRN_x4.pth --model irn --scale 4

IN and OUT are both files or both folders (OUT is created; a file IN may also go to an existing folder OUT). Every
output is a PNG named after its input; nothing is overwritten without ``--force``. `down` records the HR size, the
scale and the model in text chunks of the LR PNG (`irrm_jax.lr_files`), so `up` restores the original size even
when the scale did not divide it; an LR without them upscales to ``scale x`` its size. `roundtrip` writes the
reconstruction and prints its PSNR-Y against the input. Images are padded to a multiple of ``--bucket`` (one
compilation per bucket; see `irrm_jax.inference`); ``--bucket 0`` runs each image at its own size. Input ``i`` of
the sorted list is upscaled with its own key ``fold_in(key(--seed), i)``, so outputs do not depend on ``--batch``.
Inputs are all read and checked before anything is written; problems exit with status 2 and a message naming the file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image
from tqdm import tqdm

from irrm_jax import lr_files
from irrm_jax.images import ImageDecodeError, list_image_files, read_image
from irrm_jax.inference import DEFAULT_BUCKET, Rescaler, add_dense_pallas_flag, hr_sizes, load_model_and_params
from irrm_jax.metrics import psnr_y
from irrm_jax.models import VARIANTS


class CliError(Exception):
    """A problem with the command's inputs or outputs, reported as ``error: <message>`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``irrm-rescale``."""
    parser = argparse.ArgumentParser(
        prog="irrm-rescale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("down", "up", "roundtrip"), help="what to do")
    parser.add_argument("input", type=Path, help="an image file or a folder of images")
    parser.add_argument("output", type=Path, help="a .png file, or a folder (for a folder input)")
    parser.add_argument("--checkpoint", required=True, help="training workdir / checkpoint, or an IRN .pth/.npz")
    parser.add_argument("--model", choices=list(VARIANTS), help="expected model (must be 'irn' for .pth/.npz)")
    parser.add_argument("--scale", type=int, help="expected scale (default: the checkpoint's)")
    parser.add_argument("--temperature", type=float, default=1.0, help="z ~ N(0, T^2 I) when upscaling (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the z draws")
    parser.add_argument("--bucket", type=int, default=DEFAULT_BUCKET, help="pad sizes to multiples of this; 0: none")
    parser.add_argument("--batch", type=int, default=4, help="images per jitted call")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-file lines")
    add_dense_pallas_flag(parser)
    return parser


def _plan(source: Path, target: Path) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs."""
    if not source.exists():
        raise CliError(f"input {source} does not exist.")
    if source.is_dir():
        try:
            files = list_image_files(source)
        except ValueError as e:
            raise CliError(str(e)) from e
        if target.exists() and not target.is_dir():
            raise CliError(f"input {source} is a folder, so the output must be a folder; {target} is a file.")
        pairs = [(f, target / f"{f.stem}.png") for f in files]
    else:
        out = target / f"{source.stem}.png" if target.is_dir() else target
        pairs = [(source, out)]
    for _, out in pairs:
        if out.suffix.lower() != ".png":
            raise CliError(f"outputs are written as PNG (lossless); {out} does not end in .png.")
    outs = [out for _, out in pairs]
    clashes = sorted({str(o) for o in outs if outs.count(o) > 1})
    if clashes:
        raise CliError(f"several inputs would be written to the same file: {', '.join(clashes[:5])}.")
    overwritten = {src.resolve() for src, _ in pairs} & {out.resolve() for out in outs}
    if overwritten:
        raise CliError(f"an output would overwrite its input: {', '.join(sorted(map(str, overwritten))[:3])}.")
    return pairs


def _check_overwrite(pairs: list[tuple[Path, Path]], force: bool) -> None:
    existing = [str(out) for _, out in pairs if out.exists()]
    if existing and not force:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise CliError(f"output exists: {', '.join(existing[:3])}{more}; pass --force to overwrite.")


def _read_all(command: str, pairs: list[tuple[Path, Path]], scale: int) -> list:
    items, problems = [], []
    for path, _ in pairs:
        try:
            if command == "up":
                lr = lr_files.read_lr_png(path)
                if lr.scale is not None and lr.scale != scale:
                    problems.append(f"{path} was downscaled at x{lr.scale}, but the model is x{scale}")
                elif lr.hr_size is not None:
                    hr_sizes([lr.hr_size], [lr.pixels.shape[:2]], scale)  # raises if the stored HR size does not fit
                items.append(lr)
            else:
                items.append(read_image(path).pixels)
        except ImageDecodeError as e:
            problems.append(str(e))
        except ValueError as e:
            problems.append(f"{path}: {e}")
    if problems:
        raise CliError("cannot use these inputs:\n  " + "\n  ".join(problems))
    return items


def run(args: argparse.Namespace) -> list[dict]:
    """Runs a parsed command; returns one record per written file.

    Raises:
      CliError: for a problem with the inputs, outputs or checkpoint.
    """
    if args.bucket < 0 or args.batch < 1:
        raise CliError(f"--bucket must be >= 0 and --batch >= 1, got {args.bucket} and {args.batch}.")
    if args.temperature < 0:
        raise CliError(f"--temperature must be >= 0, got {args.temperature}.")
    pairs = _plan(args.input, args.output)
    _check_overwrite(pairs, args.force)
    try:
        model, params, name, scale = load_model_and_params(
            args.checkpoint,
            args.model,
            args.scale,
            dense_pallas=args.dense_pallas or None,
            dense_cuda=args.dense_cuda or None,
        )
        rescaler = Rescaler(model, params, bucket=args.bucket or None, max_batch=args.batch)
    except (OSError, ValueError) as e:
        raise CliError(str(e)) from e
    items = _read_all(args.command, pairs, scale)
    # Input i gets its own key fold_in(key(seed), i) (see Rescaler.upscale), so outputs do not depend on --batch.
    key = jax.random.key(args.seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(len(pairs), dtype=np.uint32))
    records = []
    bar = tqdm(total=len(pairs), unit="image", disable=args.quiet)
    for start in range(0, len(pairs), args.batch):
        chunk = list(range(start, min(start + args.batch, len(pairs))))
        batch = [items[i] for i in chunk]
        chunk_keys = keys[start : start + len(chunk)]
        if args.command == "down":
            outputs = rescaler.downscale(batch)
        elif args.command == "up":
            sizes = [lr.hr_size or (scale * lr.pixels.shape[0], scale * lr.pixels.shape[1]) for lr in batch]
            outputs = rescaler.upscale(
                [lr.pixels for lr in batch], key=chunk_keys, temperature=args.temperature, hr_size=sizes
            )
        else:
            lrs = rescaler.downscale(batch)
            sizes = [hr.shape[:2] for hr in batch]
            outputs = rescaler.upscale(lrs, key=chunk_keys, temperature=args.temperature, hr_size=sizes)
        for i, out in zip(chunk, outputs, strict=True):
            src, dst = pairs[i]
            dst.parent.mkdir(parents=True, exist_ok=True)
            record = {"input": str(src), "output": str(dst), "size": out.shape[:2]}
            if args.command == "down":
                lr_files.save_lr_png(dst, out, hr_size=items[i].shape[:2], scale=scale, model=name)
            else:
                Image.fromarray(out).save(dst, format="PNG")
            if args.command == "roundtrip":
                record["psnr_y"] = psnr_y(out, items[i], crop=scale) if min(out.shape[:2]) > 2 * scale else None
            records.append(record)
            if not args.quiet:
                extra = f", PSNR-Y {record['psnr_y']:.2f} dB" if record.get("psnr_y") is not None else ""
                tqdm.write(f"{src} -> {dst} ({out.shape[0]}x{out.shape[1]}{extra})")
        bar.update(len(chunk))
    bar.close()
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``irrm-rescale``; returns the exit status (0 on success, 2 on an input/output problem)."""
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax/tfds notices about read-only restores etc.
    try:
        records = run(args)
    except CliError as e:
        print(f"irrm-rescale: error: {e}", file=sys.stderr)
        return 2
    scores = [r["psnr_y"] for r in records if r.get("psnr_y") is not None]
    summary = f"wrote {len(records)} image(s)"
    if scores:
        summary += f"; mean PSNR-Y of the reconstructions {np.mean(scores):.2f} dB"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
