"""The README's results table from results workdirs: training record and eval.py scores of each row.

    python scripts/results_table.py runs/results        # folders made by scripts/results.sh

Per row (a workdir with config.json, metrics.jsonl and eval/summary.json): model, parameters, MACs per HR pixel,
steps, median HR patches/s of the training loop, and per dataset PSNR-Y / SSIM-Y of the reconstruction with
z ~ N(0, I) (mean of the draws, T = 1) and with z = 0, then the LR-vs-bicubic PSNR-Y and bicubic's PSNR-Y.
Rows without an evaluation are listed with their training record only.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import ml_collections

from irrm_jax.complexity import count_params, macs_per_hr_pixel
from irrm_jax.metric_writers import read_metrics
from irrm_jax.train_state import model_from_config


def row(workdir: Path) -> dict:
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    train = read_metrics(workdir)["train"]
    model = model_from_config(config)  # with the run's overrides, if any
    out = {
        "model": f"{config.model.name} x{config.model.scale}",
        "params": count_params(model),
        "macs": macs_per_hr_pixel(model),
        "steps": max(r["step"] for r in train),
        "patches_per_s": statistics.median(r["hr_patches_per_s"] for r in train[1:] or train),
        "sets": {},
    }
    summary_path = workdir / "eval" / "summary.json"
    if summary_path.is_file():
        for set_name, s in json.loads(summary_path.read_text())["datasets"].items():
            by_t = {r["temperature"]: r for r in s["reconstruction"].values()}
            out["sets"][set_name] = (by_t.get(1.0), by_t.get(0.0), s["lr_vs_bicubic"], s["bicubic"])
    return out


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    spread = f" ± {r['psnr_y_std_draws']:.2f}" if r.get("draws", 1) > 1 else ""
    return f"{r['psnr_y_mean']:.2f}{spread} / {r['ssim_y_mean']:.4f}"


def table(rows: list[dict]) -> str:
    sets = list(dict.fromkeys(s for r in rows for s in r["sets"]))
    head = ["model", "parameters", "MACs / HR px", "steps", "patches/s"]
    head += [f"{s}: {what}" for s in sets for what in ("T=1", "T=0", "LR vs bicubic", "bicubic")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["model"],
            f"{r['params']:,}",
            f"{r['macs'] / 1e3:.1f}k",
            f"{r['steps']:,}",
            f"{r['patches_per_s']:.0f}",
        ]
        for s in sets:
            t1, t0, lr, bicubic = r["sets"].get(s, (None, None, None, None))
            cells += [cell(t1), cell(t0)]
            cells += [f"{x['psnr_y']:.2f}" if x else "-" for x in (lr, bicubic)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("folder", type=Path, help="holds one workdir per row")
    args = parser.parse_args()
    workdirs = sorted(p for p in args.folder.iterdir() if (p / "config.json").is_file())
    if not workdirs:
        sys.exit(f"no results workdir (with config.json) in {args.folder}")
    print(table([row(w) for w in workdirs]))


if __name__ == "__main__":
    main()
