"""scripts/results_table.py (the README results table) and `read_metrics`, which it and plot_training.py use."""

import importlib.util
import json
from pathlib import Path

from configs import results
from irrm_jax.metric_writers import read_metrics

SCRIPT = Path(__file__).parents[1] / "scripts" / "results_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reconstruction(t, psnr, ssim, draws, std):
    return {"temperature": t, "draws": draws, "psnr_y_mean": psnr, "ssim_y_mean": ssim, "psnr_y_std_draws": std}


def test_table_row_from_a_workdir(tmp_path):
    work = tmp_path / "irrm_s_x4"
    (work / "eval").mkdir(parents=True)
    (work / "config.json").write_text(results.get_config("irrm_s_x4").to_json_best_effort())
    records = [
        {"step": s, "split": "train", "hr_patches_per_s": p} for s, p in ((100, 50.0), (200, 600.0), (300, 598.0))
    ]
    records.append({"step": 300, "split": "validation", "psnr_y": 26.0})
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "datasets": {
            "set5": {
                "reconstruction": {
                    "T0": reconstruction(0.0, 30.5, 0.9, 1, 0.0),
                    "T1": reconstruction(1.0, 29.25, 0.85, 5, 0.013),
                },
                "lr_vs_bicubic": {"psnr_y": 33.123, "ssim_y": 0.97},
                "bicubic": {"psnr_y": 28.43, "ssim_y": 0.81},
            }
        }
    }
    (work / "eval" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "not_a_run").mkdir()
    script = load_script()
    row = script.row(work)
    # 714,840 parameters and 69.1k MACs per HR pixel (README's model table); the first interval (compilation) is
    # left out of the median patches/s.
    assert (row["model"], row["params"], row["steps"], row["patches_per_s"]) == ("irrm_s x4", 714_840, 300, 599.0)
    assert row["validation_psnr_y"] == 26.0
    tables = script.table([row]).split("\n\n")
    assert tables[0].splitlines()[2] == "| irrm_s x4 | 714,840 | 69.1k | 300 | 599 | 26.00 |"
    assert tables[1].splitlines()[0] == "| model | set5 T=1 | set5 T=0 |"
    assert tables[1].splitlines()[2] == "| irrm_s x4 | 29.25 ± 0.01 / 0.8500 | 30.50 / 0.9000 |"
    assert tables[2].splitlines()[2:] == [
        "| irrm_s x4: LR vs bicubic LR | 33.12 |",
        "| bicubic down and up x4 | 28.43 |",
    ]


def test_read_metrics_keeps_the_last_record_of_a_rewritten_step(tmp_path):
    lines = [
        {"step": 200, "split": "train", "loss": 2.0},
        {"step": 100, "split": "train", "loss": 9.0},
        {"step": 200, "split": "validation", "psnr_y": 20.0},
        {"step": 200, "split": "train", "loss": 1.5},  # written again after a resume
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")
    records = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records["train"]] == [(100, 9.0), (200, 1.5)]
    assert records["validation"] == [{"step": 200, "split": "validation", "psnr_y": 20.0}]
    assert read_metrics(tmp_path / "metrics.jsonl") == records


def test_table_row_merges_per_set_evaluations(tmp_path):
    work = tmp_path / "irn_x4"
    work.mkdir()
    (work / "config.json").write_text(results.get_config("irn_x4").to_json_best_effort())
    (work / "metrics.jsonl").write_text(json.dumps({"step": 100, "split": "train", "hr_patches_per_s": 150.0}) + "\n")
    for name, psnr in (("set5", 29.9), ("bsd100", 27.2)):  # one eval.py job per set, as run in parallel
        (work / f"eval_{name}").mkdir()
        summary = {
            "datasets": {
                name: {
                    "reconstruction": {"T1": reconstruction(1.0, psnr, 0.8, 5, 0.02)},
                    "lr_vs_bicubic": {"psnr_y": 35.0},
                    "bicubic": {"psnr_y": 26.0},
                }
            }
        }
        (work / f"eval_{name}" / "summary.json").write_text(json.dumps(summary))
    row = load_script().row(work)
    assert sorted(row["sets"]) == ["bsd100", "set5"]
    assert row["sets"]["set5"][0]["psnr_y_mean"] == 29.9 and row["sets"]["bsd100"][0]["psnr_y_mean"] == 27.2
    assert row["sets"]["set5"][1] is None  # no T = 0 in these summaries
    unevaluated = dict(row, sets={})  # a row of the same scale without scores does not blank the bicubic row
    tables = load_script().table([unevaluated, row]).split("\n\n")
    assert tables[1].splitlines()[0] == "| model | set5 T=1 | bsd100 T=1 | set5 T=0 | bsd100 T=0 |"  # usual order
    assert tables[1].splitlines()[2] == "| irn x4 | - | - | - | - |"
    assert tables[2].splitlines()[-1] == "| bicubic down and up x4 | 26.00 | 26.00 |"
