"""Plots the training curves of a run from its ``metrics.jsonl``: loss terms and validation PSNR.

    python scripts/plot_training.py WORKDIR/metrics.jsonl OUT.png [--title "IRRM-M x4, T91"]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loss_rec", "loss_fit", "loss_ce"):
        ax_loss.plot([r["step"] for r in train], [r[key] for r in train], label=key)
    ax_loss.set(xlabel="step", ylabel="loss (per-sample sums, batch mean)", yscale="log", title="training loss")
    ax_loss.legend()
    for key, label in (("psnr_y", "reconstruction PSNR-Y, z ~ N(0, I)"), ("psnr_y_lr", "LR vs bicubic PSNR-Y")):
        if val and key in val[0]:
            ax_psnr.plot([r["step"] for r in val], [r[key] for r in val], marker="o", label=label)
    ax_psnr.set(xlabel="step", ylabel="dB", title="validation")
    ax_psnr.legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
