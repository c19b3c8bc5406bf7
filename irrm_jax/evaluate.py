"""Evaluation of a rescaling model against bicubic on image sets, with z drawn at several temperatures.

    python eval.py --checkpoint WORKDIR --datasets set5 set14 /path/to/folder --data-root ../shared/data --out DIR

Protocol (spec 3.8, 3.9): each HR image is mod-cropped to a multiple of the scale (top-left kept) and run at its
own size (`irrm_jax.inference.Rescaler` with ``bucket=None``). Scores are those of `irrm_jax.metrics`: uint8
images, BT.601 Y, ``scale`` pixels shaved, MATLAB SSIM, dataset score = mean of per-image values. An image with a
side under 3 * scale pixels (nothing would be left after the mod-crop and the shave) is skipped with a warning and
listed in its set's ``skipped``. Per image:

* **bicubic**: MATLAB-bicubic down and up (`irrm_jax.resize.bicubic_roundtrip`, uint8 after each pass) vs the HR;
* **LR**: the model's 8-bit LR vs that bicubic LR, with no border shaved;
* **reconstruction** at each temperature T: upscale the 8-bit LR with z ~ N(0, T^2 I), ``draws`` draws for
  T > 0 (one for T = 0, which is deterministic); draw d of image i uses the key `draw_key` (seed, i, d).

A dataset's ``*_mean`` is the mean over images and draws; ``*_std_draws`` is the standard deviation over draws of
the dataset mean (the spread the IRN README quotes), ``*_std_image`` the mean over images of the per-image
standard deviation over draws. Single-channel sources (Set14 ``bridge``) are scored on one channel: the HR's own,
and the mean of the three output channels (rounded) for the model's outputs.

A folder is named after itself, or after its parent when it is called ``HR`` (``/d/Set5/HR`` is ``Set5``); two
sets whose names differ only in case (or in characters that `_safe` replaces) are refused, as their results
would overwrite each other.

Written to ``out_dir``: ``per_image.csv``, ``summary.json``, ``summary.md``, ``psnr_vs_temperature.png``, and per
dataset ``<name>/comparison.png`` (crops of HR, LR, bicubic, reconstruction), ``<name>/lr/*.png`` (the 8-bit LR a
user would store, with its HR size in a PNG text chunk) and ``<name>/recon_T<t>/*.png`` (the first draw).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from irrm_jax import datasets, lr_files
from irrm_jax.datasets import ImageSource
from irrm_jax.images import mod_crop
from irrm_jax.inference import Rescaler, add_dense_pallas_flag, load_model_and_params
from irrm_jax.metrics import MeanAccumulator, psnr_rgb, psnr_y, ssim_y
from irrm_jax.resize import bicubic_roundtrip

TEMPERATURES = (0.0, 0.5, 1.0)
"""Temperatures of z evaluated by default (spec 3.8 uses T = 1; 5.5 asks for T = 0 too)."""

DEFAULT_DRAWS = 5
"""Draws of z per image for T > 0 (the IRN README averages 5)."""

_MIN_LR_SIZE = 3  # an LR side of 3 pixels is the smallest HR side (3 * scale) that survives the scale-pixel shave
_SSIM_MIN_SIZE = 11  # the SSIM window; smaller LRs get no LR SSIM (NaN)
_FIGURE_IMAGES = 4
_FIGURE_CROP = 96

_log = logging.getLogger(__name__)


def draw_key(seed: int, image_index: int, draw: int) -> jax.Array:
    """The PRNG key of draw ``draw`` of image ``image_index``: ``fold_in(fold_in(key(seed), image), draw)``.

    `Rescaler.upscale` of a single image then draws z from ``fold_in(draw_key(...), 0)``.
    """
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), image_index), draw)


def open_dataset(
    spec: str, *, data_root: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> tuple[str, ImageSource]:
    """A named image set from a tfds configuration name or a folder of images.

    Args:
      spec: a name of `irrm_jax.datasets.config_names` (case-insensitive: 'set5', 'Set14', 'bsd100', ...) or a
        folder of image files.
      data_root: the folder holding ``<Set>/HR`` for named sets (needed the first time each is prepared).
      data_dir: where tfds caches prepared datasets (default: tfds's).

    Returns:
      ``(dataset_name(spec), source)``.

    Raises:
      ValueError: when ``spec`` is neither a folder nor a known name (the message lists the names).
    """
    source = datasets.open_source(spec, folder_split="test", root=data_root, data_dir=data_dir)
    return dataset_name(spec), source


def dataset_name(spec: str) -> str:
    """The name results of ``spec`` are reported under: a known set's name as given, else the folder's base name,
    or its parent's for a folder called ``HR`` (any case; the usual ``<Set>/HR`` layout)."""
    if spec.lower() in datasets.config_names():
        return spec
    path = Path(spec).expanduser().resolve()
    return path.parent.name if path.name.lower() == "hr" and path.parent.name else path.name


def check_unique_names(specs: Sequence[str], names: Sequence[str] | None = None) -> None:
    """Raises ValueError when two sets would share a name (ignoring case and `_safe`'s replacements).

    Args:
      specs: how the user named the sets (quoted in the message).
      names: their names (default: `dataset_name` of each spec).
    """
    names = [dataset_name(s) for s in specs] if names is None else names
    seen: dict[str, str] = {}
    for spec, name in zip(specs, names, strict=True):
        key = _safe(name).lower()
        if key in seen:
            raise ValueError(
                f"datasets {seen[key]!r} and {spec!r} would both be named {name!r} (ignoring case), so their "
                "results would overwrite each other; give one of them another folder name."
            )
        seen[key] = spec


def _temperature_label(t: float) -> str:
    return f"T{t:g}"


def _scored(img: np.ndarray, single_channel: bool) -> np.ndarray:
    """The view of a uint8 RGB image that is scored: itself, or the rounded mean of its channels (gray source)."""
    if not single_channel:
        return img
    return np.round(img.astype(np.float64).mean(axis=-1)).astype(np.uint8)


def _pair_metrics(pred: np.ndarray, ref: np.ndarray, crop: int, single_channel: bool) -> dict[str, float]:
    p, r = _scored(pred, single_channel), _scored(ref, single_channel)
    ssim = ssim_y(p, r, crop) if min(p.shape[:2]) - 2 * crop >= _SSIM_MIN_SIZE else math.nan
    return {"psnr_y": psnr_y(p, r, crop), "ssim_y": ssim, "psnr_rgb": psnr_rgb(p, r, crop)}


def evaluate(
    model: Any,
    params: Any,
    image_sets: Mapping[str, ImageSource] | Sequence[tuple[str, ImageSource]],
    out_dir: str | os.PathLike,
    *,
    temperatures: Sequence[float] = TEMPERATURES,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    bucket: int | None = None,
    max_images: int | None = None,
    save_images: bool = True,
    figures: bool = True,
    progress: bool = True,
    model_name: str = "",
    checkpoint: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Scores a model on image sets and writes the CSV, JSON, Markdown, images and figures.

    Args:
      model: an `irrm_jax.models.InvertibleRescaler`.
      params: its parameters.
      image_sets: ``{name: source}`` or ``[(name, source), ...]`` (see `open_dataset`).
      out_dir: the results folder (created; existing files in it are overwritten).
      temperatures: the temperatures of z (>= 0).
      draws: draws of z per image for each T > 0 (T = 0 uses one).
      seed: seed of the z draws (see `draw_key`).
      bucket: `Rescaler` bucket; None (the protocol) runs every image at its own size.
      max_images: read at most this many images per set (None: all); too small ones among them are skipped.
      save_images: write the 8-bit LRs and the reconstructions.
      figures: write the comparison figures and the PSNR-vs-temperature plot.
      progress: show tqdm progress bars.
      model_name: recorded in the summary and the LR PNGs.
      checkpoint: recorded in the summary.
      extra: more entries for the summary (e.g. how the model was trained).

    Returns:
      The summary (what ``summary.json`` holds).

    Raises:
      ValueError: for a negative temperature, draws < 1, max_images < 1, no image set, two sets of one name (see
        `check_unique_names`), or a set with no image large enough to score.
    """
    temperatures = [float(t) for t in temperatures]
    if not temperatures or min(temperatures) < 0:
        raise ValueError(f"temperatures must be a non-empty list of values >= 0, got {temperatures}.")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}.")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 (or None for all), got {max_images}.")
    sets = list(image_sets.items()) if isinstance(image_sets, Mapping) else list(image_sets)
    if not sets:
        raise ValueError("no image set to evaluate.")
    check_unique_names([name for name, _ in sets], [name for name, _ in sets])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rescaler = Rescaler(model, params, bucket=bucket, max_batch=1)
    scale = rescaler.scale
    start = time.perf_counter()
    summary: dict[str, Any] = {
        "model": model_name,
        "scale": scale,
        "checkpoint": checkpoint,
        "protocol": {
            "mod_crop": scale,
            "crop_border": scale,
            "lr_crop_border": 0,
            "metric_space": "uint8; BT.601 Y = 16 + 65.481 R + 128.553 G + 24.966 B (not rounded)",
            "single_channel_sources": "scored on one channel (HR's own; rounded mean of the output channels)",
            "bicubic": "MATLAB imresize, uint8 after each pass",
            "temperatures": temperatures,
            "draws": draws,
            "seed": seed,
            "bucket": bucket,
        },
        "datasets": {},
    }
    rows: list[dict[str, Any]] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    for name, source in sets:
        set_rows, set_summary, examples[name] = _evaluate_set(
            rescaler, name, source, out_dir, temperatures, draws, seed, max_images, save_images, progress, model_name
        )
        rows += set_rows
        summary["datasets"][name] = set_summary
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["compilations"] = rescaler.compile_count
    summary.update(extra or {})
    _write_csv(rows, out_dir / "per_image.csv")
    (out_dir / "summary.json").write_text(json.dumps(_finite_or_none(summary), indent=2) + "\n")
    (out_dir / "summary.md").write_text(markdown_table(summary) + "\n")
    if figures:  # after the scores are written: a failing figure loses no result
        for name, set_examples in examples.items():
            if set_examples:
                _comparison_figure(set_examples, name, scale, out_dir / _safe(name) / "comparison.png")
        _temperature_plot(summary, out_dir / "psnr_vs_temperature.png")
    return summary


def _finite_or_none(tree: Any) -> Any:
    """NaN and infinite floats become None, so that summary.json is strict JSON."""
    if isinstance(tree, dict):
        return {k: _finite_or_none(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_finite_or_none(v) for v in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "set"


def _evaluate_set(
    rescaler: Rescaler,
    name: str,
    source: ImageSource,
    out_dir: Path,
    temperatures: list[float],
    draws: int,
    seed: int,
    max_images: int | None,
    save_images: bool,
    progress: bool,
    model_name: str,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Scores one set; images too small to score are logged and listed in the summary's ``skipped``."""
    scale = rescaler.scale
    count = len(source) if max_images is None else min(len(source), max_images)
    set_dir = out_dir / _safe(name)
    if save_images:
        (set_dir / "lr").mkdir(parents=True, exist_ok=True)
        for t in temperatures:
            (set_dir / f"recon_{_temperature_label(t)}").mkdir(parents=True, exist_ok=True)
    acc = MeanAccumulator()
    rows, examples, skipped = [], [], []
    for index in tqdm(range(count), desc=name, unit="image", disable=not progress):
        record = source[index]
        image_name, (h, w) = record["name"], record["image"].shape[:2]
        if min(h, w) < _MIN_LR_SIZE * scale:
            _log.warning("%s: skipping %r (%dx%d): too small to score at scale %d", name, image_name, h, w, scale)
            skipped.append({"image": image_name, "height": h, "width": w})
            continue
        hr, gray = mod_crop(record["image"], scale), record["channels_in_source"] == 1
        lr_bic, sr_bic = bicubic_roundtrip(hr, scale)
        lr = rescaler.downscale(hr)
        row: dict[str, Any] = {
            "dataset": name,
            "image": image_name,
            "height": hr.shape[0],
            "width": hr.shape[1],
            "channels_in_source": record["channels_in_source"],
        }
        bic = _pair_metrics(sr_bic, hr, scale, gray)
        lrm = _pair_metrics(lr, lr_bic, 0, gray)
        row.update({f"bicubic_{k}": bic[k] for k in ("psnr_y", "ssim_y")})
        row.update({f"lr_{k}": lrm[k] for k in ("psnr_y", "ssim_y")})
        acc.add({f"bicubic/{k}": v for k, v in bic.items()} | {f"lr/{k}": v for k, v in lrm.items()})
        shown = {}
        for t in temperatures:
            label = _temperature_label(t)
            per_draw = []
            for d in range(draws if t > 0 else 1):
                rec = rescaler.upscale(lr, key=draw_key(seed, index, d), temperature=t)
                per_draw.append(_pair_metrics(rec, hr, scale, gray))
                acc.add({f"{label}/draw{d}/{k}": v for k, v in per_draw[-1].items()})
                if d == 0:
                    if save_images:
                        Image.fromarray(rec).save(set_dir / f"recon_{label}" / f"{_safe(image_name)}.png")
                    shown[label] = rec
            for k in ("psnr_y", "ssim_y", "psnr_rgb"):
                values = np.array([m[k] for m in per_draw])
                row[f"{label}_{k}_mean"] = float(values.mean())
                if k != "psnr_rgb":
                    row[f"{label}_{k}_std"] = float(values.std())
                acc.add({f"{label}/{k}": float(values.mean()), f"{label}/{k}_std_image": float(values.std())})
        if save_images:
            lr_files.save_lr_png(
                set_dir / "lr" / f"{_safe(image_name)}.png", lr, hr_size=hr.shape[:2], scale=scale, model=model_name
            )
        if len(examples) < _FIGURE_IMAGES:
            examples.append({"name": image_name, "hr": hr, "lr": lr, "bicubic": sr_bic, "recon": shown, **row})
        rows.append(row)
    if not rows:
        raise ValueError(
            f"{name}: none of its {count} image(s) is large enough to score at scale {scale} (at least "
            f"{_MIN_LR_SIZE * scale} pixels a side)."
        )
    return rows, _set_summary(acc.means(), len(rows), skipped, temperatures, draws), examples


def _set_summary(
    means: dict[str, float], count: int, skipped: list[dict[str, Any]], temperatures: list[float], draws: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "images": count,
        "skipped": skipped,
        "bicubic": {k: means[f"bicubic/{k}"] for k in ("psnr_y", "ssim_y", "psnr_rgb")},
        "lr_vs_bicubic": {k: means[f"lr/{k}"] for k in ("psnr_y", "ssim_y")},
        "reconstruction": {},
    }
    for t in temperatures:
        label = _temperature_label(t)
        n_draws = draws if t > 0 else 1
        entry: dict[str, Any] = {"temperature": t, "draws": n_draws}
        for k in ("psnr_y", "ssim_y", "psnr_rgb"):
            entry[f"{k}_mean"] = means[f"{label}/{k}"]
            per_draw = np.array([means[f"{label}/draw{d}/{k}"] for d in range(n_draws)])
            entry[f"{k}_std_draws"] = float(per_draw.std())
            if k != "psnr_rgb":
                entry[f"{k}_std_image"] = means[f"{label}/{k}_std_image"]
        out["reconstruction"][label] = entry
    return out


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table: one row per dataset, PSNR-Y / SSIM-Y (± std over draws of the mean)."""
    sets = summary["datasets"]
    if not sets:
        return ""
    labels = list(next(iter(sets.values()))["reconstruction"])
    head = ["dataset", "images", "bicubic", "LR vs bicubic LR"]
    head += [f"ours, z at T={sets[next(iter(sets))]['reconstruction'][lb]['temperature']:g}" for lb in labels]
    lines = [
        f"{summary.get('model') or 'model'} x{summary['scale']}: PSNR-Y (dB) / SSIM-Y, crop {summary['scale']} px",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, s in sets.items():
        cells = [name, str(s["images"]), _pair(s["bicubic"]), _pair(s["lr_vs_bicubic"])]
        for lb in labels:
            r = s["reconstruction"][lb]
            spread = f" ± {r['psnr_y_std_draws']:.2f}" if r["draws"] > 1 else ""
            cells.append(f"{r['psnr_y_mean']:.2f}{spread} / {r['ssim_y_mean']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    for name, s in sets.items():
        if s.get("skipped"):
            lines.append(f"\n{name}: skipped (too small to score): {', '.join(i['image'] for i in s['skipped'])}")
    return "\n".join(lines)


def _pair(m: Mapping[str, float]) -> str:
    return f"{m['psnr_y']:.2f} / {m['ssim_y']:.4f}"


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


def _crop_box(hr: np.ndarray, size: int, scale: int) -> tuple[int, int, int]:
    """A square HR window (top, left, side; multiples of the scale) around the most textured region."""
    side = min(size, hr.shape[0], hr.shape[1]) // scale * scale
    gray = hr.astype(np.float64).mean(axis=-1)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    stride = max(side // 2, scale)
    best, box = -1.0, (0, 0)
    for top in range(0, hr.shape[0] - side + 1, stride):
        for left in range(0, hr.shape[1] - side + 1, stride):
            e = float(energy[top : top + side - 1, left : left + side - 1].sum())
            if e > best:
                best, box = e, (top, left)
    top, left = (v // scale * scale for v in box)
    return top, left, side


def _comparison_figure(examples: list[dict[str, Any]], name: str, scale: int, path: Path) -> None:
    """Rows of crops: HR, the 8-bit LR (nearest-neighbour enlarged), bicubic, ours at each temperature (draw 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(examples[0]["recon"])
    columns = ["HR", f"our 8-bit LR (x{scale} nearest)", "bicubic down + up"] + [
        f"ours, z at T={t[1:]}" for t in labels
    ]
    fig = Figure(figsize=(2.6 * len(columns), 2.9 * len(examples) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(examples), len(columns), squeeze=False)
    for r, ex in enumerate(examples):
        top, left, side = _crop_box(ex["hr"], _FIGURE_CROP, scale)
        window = (slice(top, top + side), slice(left, left + side))
        lr_window = (slice(top // scale, (top + side) // scale), slice(left // scale, (left + side) // scale))
        lr_up = np.repeat(np.repeat(ex["lr"][lr_window], scale, axis=0), scale, axis=1)
        panels = [
            (ex["hr"][window], f"{ex['height']}x{ex['width']}"),
            (lr_up, f"vs bicubic LR: {ex['lr_psnr_y']:.2f} dB"),
            (ex["bicubic"][window], f"{ex['bicubic_psnr_y']:.2f} dB"),
        ]
        panels += [(ex["recon"][t][window], f"{ex[f'{t}_psnr_y_mean']:.2f} dB") for t in labels]
        for c, (img, caption) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest", cmap="gray" if img.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=8)
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        axes[r, 0].set_ylabel(ex["name"], fontsize=9)
    fig.suptitle(
        f"{name}: HR crops (at most {_FIGURE_CROP} px); PSNR-Y of the whole image, mean over draws", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)


def _temperature_plot(summary: Mapping[str, Any], path: Path) -> None:
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (name, s) in enumerate(summary["datasets"].items()):
        color = f"C{i % 10}"
        recs = list(s["reconstruction"].values())
        ax.errorbar(
            [r["temperature"] for r in recs],
            [r["psnr_y_mean"] for r in recs],
            yerr=[r["psnr_y_std_draws"] for r in recs],
            marker="o",
            capsize=3,
            color=color,
            label=f"{name}: ours",
        )
        ax.axhline(s["bicubic"]["psnr_y"], linestyle="--", color=color, label=f"{name}: bicubic")
    ax.set_xlabel("temperature T of z ~ N(0, T² I)")
    ax.set_ylabel("PSNR-Y (dB)")
    ax.set_title(f"{summary.get('model') or 'model'} x{summary['scale']}: reconstruction vs z temperature")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``eval.py`` / ``irrm-eval``."""
    parser = argparse.ArgumentParser(
        prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="training workdir / checkpoint, or an IRN .pth/.npz")
    parser.add_argument("--model", help="expected model name (required as 'irn' only for .pth/.npz files)")
    parser.add_argument("--scale", type=int, help="expected scale (inferred from the checkpoint)")
    parser.add_argument(
        "--datasets", nargs="+", required=True, help=f"folders or names ({', '.join(datasets.config_names())})"
    )
    parser.add_argument("--data-root", help="folder holding <Set>/HR for named sets (first use only)")
    parser.add_argument("--tfds-data-dir", help="where tfds caches prepared datasets (default: tfds's)")
    parser.add_argument("--out", required=True, help="results folder")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="draws of z per image for T > 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bucket", type=int, help="pad sizes to multiples of this (default: run at each size)")
    parser.add_argument("--max-images", type=_positive_int, help="score at most this many images per set")
    parser.add_argument("--no-images", action="store_true", help="do not write LR and reconstruction PNGs")
    parser.add_argument("--no-figures", action="store_true", help="do not draw figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_dense_pallas_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: evaluates, prints the Markdown table and where the results are."""
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax/tfds notices about read-only restores etc.
    try:
        check_unique_names(args.datasets)  # before any slow work
        model, params, name, scale = load_model_and_params(
            args.checkpoint,
            args.model,
            args.scale,
            dense_pallas=args.dense_pallas or None,
            dense_cuda=args.dense_cuda or None,
        )
        sets = [open_dataset(s, data_root=args.data_root, data_dir=args.tfds_data_dir) for s in args.datasets]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = evaluate(
        model,
        params,
        sets,
        args.out,
        temperatures=args.temperatures,
        draws=args.draws,
        seed=args.seed,
        bucket=args.bucket,
        max_images=args.max_images,
        save_images=not args.no_images,
        figures=not args.no_figures,
        progress=not args.no_progress,
        model_name=name,
        checkpoint=str(args.checkpoint),
    )
    print(markdown_table(summary))
    print(f"\nResults in {Path(args.out).resolve()} ({summary['seconds']} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
