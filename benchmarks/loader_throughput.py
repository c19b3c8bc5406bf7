"""Training-loader throughput: random HR crops per second, in memory and streaming, 0 and N workers.

Reads T91 + BSD200 from ``<repo>/../shared/data`` when it exists (or ``--data-root``), otherwise
generates 291 images of 321x481 as PNGs (``--generated`` forces generated images, e.g.
``--generated 64 1404 2040`` for DIV2K-sized ones). Prints a table and a JSON line.

    JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.loader_throughput          # N = CPU count
    JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.loader_throughput --workers 4 --seconds 5

A GPU training IRN at full speed consumes well over 500 HR patches (144x144) per second.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from irrm_jax import datasets, input_pipeline

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _generated_folder(folder: Path, count: int, height: int, width: int) -> Path:
    """Writes smooth random colour images (PNG compresses them like photos, not like noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (11, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-3, 4, (height, width, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"gen{i:03d}.png")
    return folder


def _source(args, data_dir: Path, scratch: Path) -> tuple[datasets.ImageSource, str]:
    root = args.data_root
    if args.generated is None and (root / "T91").is_dir() and (root / "BSD200").is_dir():
        parts = [datasets.local_source(n, root=root, data_dir=data_dir) for n in ("t91", "bsd200")]
        return datasets.concatenate(parts), f"T91+BSD200 from {root}"
    count, height, width = args.generated or (291, 321, 481)
    folder = _generated_folder(scratch / "generated", count, height, width)
    return datasets.folder_source(folder, data_dir=data_dir), f"{count} generated {height}x{width} PNGs"


def _measure(source, *, in_memory, workers, batch, patch, seconds) -> dict:
    start = time.perf_counter()
    iterator = input_pipeline.create_train_iterator(
        source,
        patch_size=patch,
        global_batch_size=batch,
        seed=0,
        in_memory=in_memory,
        worker_count=workers,
    )
    for _ in range(2):  # warm-up: start workers, fill buffers
        next(iterator)
    setup = time.perf_counter() - start
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch_arrays = next(iterator)
        count += len(batch_arrays["hr"])
        del batch_arrays
    elapsed = time.perf_counter() - start
    iterator.close()
    return {
        "mode": "in_memory" if in_memory else "streaming",
        "workers": workers,
        "crops_per_s": count / elapsed,
        "setup_s": setup,
        "crops": count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="holds T91/ and BSD200/")
    parser.add_argument("--data-dir", type=Path, default=None, help="tfds cache (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="N, the grain worker count")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=144)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per configuration")
    parser.add_argument(
        "--generated", type=int, nargs=3, metavar=("COUNT", "HEIGHT", "WIDTH"), help="use generated images"
    )
    parser.add_argument("--modes", nargs="+", choices=["in_memory", "streaming"], default=["in_memory", "streaming"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data_dir = args.data_dir or scratch / "tfds"
        source, description = _source(args, data_dir, scratch)
        results = [
            _measure(
                source, in_memory=m == "in_memory", workers=w, batch=args.batch, patch=args.patch, seconds=args.seconds
            )
            for m in args.modes
            for w in sorted({0, args.workers})
        ]

    print(f"\nData: {description} ({len(source)} images); batch {args.batch} of {args.patch}x{args.patch}")
    print(f"Host: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print(f"| {'mode':<10} | {'workers':>7} | {'crops/s':>8} | {'setup s':>7} |")
    print(f"|{'-' * 12}|{'-' * 9}|{'-' * 10}|{'-' * 9}|")
    for r in results:
        print(f"| {r['mode']:<10} | {r['workers']:>7} | {r['crops_per_s']:>8.0f} | {r['setup_s']:>7.1f} |")
    report = {
        "data": description,
        "images": len(source),
        "batch": args.batch,
        "patch": args.patch,
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
