"""The one-command demo runs end to end (with a few steps and small held-out crops) and writes its results."""

import csv
import json

import pytest

from irrm_jax import demo


def test_training_and_held_out_images_differ():
    assert not set(demo.TRAIN_IMAGES) & set(demo.TEST_IMAGES)
    assert demo.sample_image("camera").ndim == 2 and demo.sample_image("coffee").shape[-1] == 3


@pytest.mark.timeout(300)
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--steps", "3", "--out", str(out), "--draws", "2", "--eval-size", "48", "--no-progress"]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    assert "| heldout | 2 |" in printed and str(out.resolve()) in printed
    for name in ("summary.md", "summary.json", "per_image.csv", "heldout/comparison.png", "psnr_vs_temperature.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "images" / "train").glob("*.png"))) == len(demo.TRAIN_IMAGES)
    assert (out / "workdir" / "checkpoints" / "3").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["steps"] == 3 and summary["model"] == "irrm_s" and summary["scale"] == 2
    assert list(summary["datasets"]["heldout"]["reconstruction"]) == ["T0", "T0.5", "T1"]
    with (out / "per_image.csv").open() as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert rows["camera"]["channels_in_source"] == "1" and rows["coffee"]["channels_in_source"] == "3"
    assert (rows["coffee"]["height"], rows["coffee"]["width"]) == ("48", "48")


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("do not touch")
    assert demo.main(["--steps", "1", "--out", str(tmp_path)]) == 2
    assert "not made by the demo" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]
