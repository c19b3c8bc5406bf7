"""Plots training curves from ``metrics.jsonl`` files: one run in detail, or several runs side by side.

    python scripts/plot_training.py OUT.png WORKDIR/metrics.jsonl [--title "IRRM-M x4, T91"]
    python scripts/plot_training.py OUT.png runs/results/*/metrics.jsonl --labels "IRN x4,IRRM-S x4,..."

One run: its loss terms and validation PSNRs. Several runs: each run's total loss, validation reconstruction
PSNR-Y and LR-vs-bicubic PSNR-Y. A resumed run's records are kept once per step (the last written wins).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from irrm_jax.metric_writers import read_metrics  # noqa: E402

PSNR_KEYS = (("psnr_y", "reconstruction PSNR-Y, z ~ N(0, I)"), ("psnr_y_lr", "LR vs bicubic PSNR-Y"))


def read_run(path: Path) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of a metrics.jsonl, one per step, by step."""
    records = read_metrics(path)
    return records.get("train", []), records.get("validation", [])


def plot_one(ax_loss, ax_psnr, train: list[dict], val: list[dict]) -> None:
    for key in ("loss", "loss_rec", "loss_fit", "loss_ce"):
        ax_loss.plot([r["step"] for r in train], [r[key] for r in train], label=key)
    for key, label in PSNR_KEYS:
        if val and key in val[0]:
            ax_psnr.plot([r["step"] for r in val], [r[key] for r in val], marker="o", label=label)


def plot_many(axes, runs: list[tuple[str, list[dict], list[dict]]]) -> None:
    ax_loss, ax_rec, ax_lr = axes
    for label, train, val in runs:
        (line,) = ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        for ax, (key, _) in zip((ax_rec, ax_lr), PSNR_KEYS, strict=True):
            ax.plot([r["step"] for r in val], [r[key] for r in val], marker="o", color=line.get_color(), label=label)
    ax_rec.set(xlabel="step", ylabel="dB", title="validation: " + PSNR_KEYS[0][1])
    ax_lr.set(xlabel="step", ylabel="dB", title="validation: " + PSNR_KEYS[1][1])
    ax_rec.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("metrics", type=Path, nargs="+")
    parser.add_argument("--labels", help="comma-separated run names (default: each file's folder name)")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [p.parent.name for p in args.metrics]
    if len(labels) != len(args.metrics):
        parser.error(f"{len(labels)} labels for {len(args.metrics)} metrics files")
    runs = [(label, *read_run(path)) for label, path in zip(labels, args.metrics, strict=True)]
    if len(runs) == 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        plot_one(*axes, *runs[0][1:])
        axes[1].set(xlabel="step", ylabel="dB", title="validation")
        axes[1].legend()
    else:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        plot_many(axes, runs)
    axes[0].set(xlabel="step", ylabel="loss (per-sample sums, batch mean)", yscale="log", title="training loss")
    axes[0].legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
