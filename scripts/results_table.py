"""The README's results table from results workdirs: training record and eval.py scores of each row.

    python scripts/results_table.py runs/results        # folders made by scripts/results.sh

Per row (a workdir with config.json, metrics.jsonl and eval/summary.json, or one eval_<set>/summary.json per
set when the sets were evaluated by parallel eval.py jobs): model, parameters, MACs per HR pixel,
steps, median HR patches/s of the training loop and the last validation PSNR-Y (first table); per dataset
PSNR-Y / SSIM-Y of the reconstruction with z ~ N(0, I) (mean of the draws, T = 1) and with z = 0 (second); the
LR-vs-bicubic PSNR-Y and bicubic's PSNR-Y (third). Rows without an evaluation have '-' there.
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
    metrics = read_metrics(workdir)
    train = metrics["train"]
    model = model_from_config(config)  # with the run's overrides, if any
    out = {
        "model": f"{config.model.name} x{config.model.scale}",
        "params": count_params(model),
        "macs": macs_per_hr_pixel(model),
        "steps": max(r["step"] for r in train),
        "patches_per_s": statistics.median(r["hr_patches_per_s"] for r in train[1:] or train),
        "validation_psnr_y": (metrics.get("validation") or [{}])[-1].get("psnr_y"),
        "sets": {},
    }
    for summary_path in sorted(workdir.glob("eval*/summary.json")):  # eval/, or eval_<set>/ per parallel job
        for set_name, s in json.loads(summary_path.read_text())["datasets"].items():
            by_t = {r["temperature"]: r for r in s["reconstruction"].values()}
            out["sets"][set_name] = (by_t.get(1.0), by_t.get(0.0), s["lr_vs_bicubic"], s["bicubic"])
    return out


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    spread = f" ± {r['psnr_y_std_draws']:.2f}" if r.get("draws", 1) > 1 else ""
    return f"{r['psnr_y_mean']:.2f}{spread} / {r['ssim_y_mean']:.4f}"


SET_ORDER = ("set5", "set14", "bsd100", "urban100")


def table(rows: list[dict]) -> str:
    """Three Markdown tables: training record, reconstruction PSNR-Y / SSIM-Y (T = 1, T = 0), LR and bicubic."""
    known = list(dict.fromkeys(s for r in rows for s in r["sets"]))
    sets = sorted(known, key=lambda s: SET_ORDER.index(s) if s in SET_ORDER else len(SET_ORDER))

    def markdown(head: list[str], body: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]

    def scores(r: dict, s: str) -> tuple:
        return r["sets"].get(s, (None, None, None, None))

    psnr = lambda x: f"{x['psnr_y']:.2f}" if x else "-"  # noqa: E731
    training = markdown(
        ["model", "parameters", "MACs / HR px", "steps", "patches/s", "validation PSNR-Y"],
        [
            [
                r["model"],
                f"{r['params']:,}",
                f"{r['macs'] / 1e3:.1f}k",
                f"{r['steps']:,}",
                f"{r['patches_per_s']:.0f}",
                f"{r['validation_psnr_y']:.2f}" if r["validation_psnr_y"] is not None else "-",
            ]
            for r in rows
        ],
    )
    reconstruction = markdown(
        ["model"] + [f"{s} T=1" for s in sets] + [f"{s} T=0" for s in sets],
        [[r["model"]] + [cell(scores(r, s)[t]) for t in (0, 1) for s in sets] for r in rows],
    )
    bicubic: dict[str, dict[str, str]] = {}  # one bicubic row per scale (it does not depend on the model)
    for r in rows:
        per_set = bicubic.setdefault(r["model"].rsplit(" ", 1)[1], {})
        for s in sets:
            if per_set.get(s, "-") == "-":
                per_set[s] = psnr(scores(r, s)[3])
    low_res = markdown(
        ["PSNR-Y (dB)"] + sets,
        [[f"{r['model']}: LR vs bicubic LR"] + [psnr(scores(r, s)[2]) for s in sets] for r in rows]
        + [[f"bicubic down and up {scale}"] + [per_set[s] for s in sets] for scale, per_set in bicubic.items()],
    )
    return "\n".join(training + [""] + reconstruction + [""] + low_res)


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
