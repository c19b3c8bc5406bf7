"""Measures the "Bicubic & Bicubic" baseline (MATLAB bicubic down, then up) on benchmark sets.

The protocol of the IRN tables: HR mod-cropped to a multiple of the scale (8-bit greyscale images
kept single-channel), LR = imresize(HR, 1 / s) and SR = imresize(LR, s) as uint8, PSNR_Y /
SSIM_Y with ``s`` pixels shaved, mean of the per-image values. Prints a Markdown table with the
published rows (IRN README) for comparison. About 10 s on 2 CPU cores.

Run from the repository root:

    .venv/bin/python -m benchmarks.bicubic_baseline [--data-dir ../shared/data]
"""

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from irrm_jax.metrics import MeanAccumulator, psnr_y, ssim_y
from irrm_jax.resize import bicubic_roundtrip

DATASETS = ("Set5", "Set14", "BSD100")
SCALES = (2, 4)
PUBLISHED = {
    2: {"Set5": (33.66, 0.9299), "Set14": (30.24, 0.8688), "BSD100": (29.56, 0.8431)},
    4: {"Set5": (28.42, 0.8104), "Set14": (26.00, 0.7027), "BSD100": (25.96, 0.6675)},
}


def load_hr(path: Path) -> np.ndarray:
    """Reads a PNG as uint8: 8-bit greyscale stays HxW, every other mode becomes HxWx3 RGB."""
    with Image.open(path) as img:
        return np.asarray(img if img.mode == "L" else img.convert("RGB"))


def bicubic_scores(hr_dir: Path, scale: int) -> tuple[float, float, int]:
    """Mean PSNR_Y and SSIM_Y of the bicubic round trip over every PNG in ``hr_dir``."""
    acc = MeanAccumulator()
    for path in sorted(hr_dir.glob("*.png")):
        hr = load_hr(path)
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        _, sr = bicubic_roundtrip(hr, scale)
        acc.add({"psnr_y": psnr_y(sr, hr, scale), "ssim_y": ssim_y(sr, hr, scale)})
    if not acc.counts():
        raise FileNotFoundError(f"no PNG images in {hr_dir}")
    means = acc.means()
    return means["psnr_y"], means["ssim_y"], acc.counts()["psnr_y"]


def main() -> None:
    default_data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data, help="holds <set>/HR/*.png")
    args = parser.parse_args()

    start = time.perf_counter()
    print("| | " + " | ".join(DATASETS) + " |")
    print("|---" * (len(DATASETS) + 1) + "|")
    for scale in SCALES:
        cells = []
        for name in DATASETS:
            psnr_value, ssim_value, _ = bicubic_scores(args.data_dir / name / "HR", scale)
            cells.append(f"{psnr_value:.2f} / {ssim_value:.4f}")
        published = [f"{p:.2f} / {s:.4f}" for p, s in (PUBLISHED[scale][n] for n in DATASETS)]
        print(f"| x{scale} measured | " + " | ".join(cells) + " |")
        print(f"| x{scale} published | " + " | ".join(published) + " |")
    print(f"\nPSNR_Y (dB) / SSIM_Y; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
