"""Tests of the evaluation: files written, values equal to metrics computed directly, temperatures, the CLI."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from irrm_jax import evaluate as ev
from irrm_jax import lr_files
from irrm_jax.datasets import ArrayImageSource
from irrm_jax.inference import Rescaler
from irrm_jax.metrics import psnr_y, ssim_y, to_uint8
from irrm_jax.models import build_model
from irrm_jax.resize import bicubic_roundtrip
from irrm_jax.verify import random_nonzero_params

SCALE = 2
SIZE = (26, 30)  # one shape for every image: one compilation per direction


@pytest.fixture(scope="module")
def tiny():
    model = build_model("irrm_s", SCALE, blocks_per_level=(1,), nf=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    return model, random_nonzero_params(params, seed=3, gain=0.2)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    smooth = [np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8)).resize(SIZE[::-1])) for _ in "ab"]
    gray = rng.integers(0, 256, SIZE + (1,), np.uint8)[..., 0]
    return {"a": smooth[0], "b": smooth[1], "gray": gray}


@pytest.fixture(scope="module")
def evaluated(tiny, images, tmp_path_factory):
    model, params = tiny
    out = tmp_path_factory.mktemp("eval")
    source = ArrayImageSource(list(images.values()), list(images))
    summary = ev.evaluate(model, params, {"tiny": source}, out, draws=2, seed=7, progress=False, model_name="tiny")
    with (out / "per_image.csv").open() as f:
        rows = {row["image"]: row for row in csv.DictReader(f)}
    return out, summary, rows


def _direct_lr(model, params, hr):
    lr, _ = model.apply({"params": params}, jnp.asarray(hr, jnp.float32)[None] / 255.0)
    return np.round(np.clip(np.asarray(lr[0]), 0, 1) * 255.0).astype(np.uint8)


def _direct_recon(model, params, lr, z):
    x = model.apply({"params": params}, jnp.asarray(lr, jnp.float32)[None] / 255.0, z[None], method=model.inverse)
    return to_uint8(np.asarray(x[0]))


def _scored(img, gray):
    return np.round(img.astype(np.float64).mean(-1)).astype(np.uint8) if gray else img


def test_files_are_written(evaluated):
    out, _, _ = evaluated
    for name in ("per_image.csv", "summary.json", "summary.md", "psnr_vs_temperature.png", "tiny/comparison.png"):
        assert (out / name).stat().st_size > 0, name
    for sub in ("lr", "recon_T0", "recon_T0.5", "recon_T1"):
        assert sorted(p.name for p in (out / "tiny" / sub).iterdir()) == ["a.png", "b.png", "gray.png"]
    lr = lr_files.read_lr_png(out / "tiny" / "lr" / "a.png")
    assert lr.hr_size == SIZE and lr.scale == SCALE and lr.model == "tiny"
    with Image.open(out / "psnr_vs_temperature.png") as plot:
        assert plot.size[0] >= 400


@pytest.mark.parametrize("name", ["a", "gray"])
def test_values_equal_metrics_computed_directly(tiny, images, evaluated, name):
    model, params = tiny
    _, _, rows = evaluated
    row = rows[name]
    gray = name == "gray"
    hr = np.repeat(images[name][..., None], 3, -1) if gray else images[name]
    lr_bic, sr_bic = bicubic_roundtrip(hr, SCALE)
    lr = _direct_lr(model, params, hr)
    expected = {
        "bicubic_psnr_y": psnr_y(_scored(sr_bic, gray), _scored(hr, gray), SCALE),
        "bicubic_ssim_y": ssim_y(_scored(sr_bic, gray), _scored(hr, gray), SCALE),
        "lr_psnr_y": psnr_y(_scored(lr, gray), _scored(lr_bic, gray), 0),
    }
    z_shape = lr.shape[:2] + (3 * SCALE**2 - 3,)
    rec0 = _direct_recon(model, params, lr, jnp.zeros(z_shape))
    expected["T0_psnr_y_mean"] = psnr_y(_scored(rec0, gray), _scored(hr, gray), SCALE)
    expected["T0_ssim_y_mean"] = ssim_y(_scored(rec0, gray), _scored(hr, gray), SCALE)
    index = list(images).index(name)
    scores = []
    for draw in range(2):
        key = jax.random.fold_in(ev.draw_key(7, index, draw), 0)
        rec = _direct_recon(model, params, lr, jax.random.normal(key, z_shape))
        scores.append(psnr_y(_scored(rec, gray), _scored(hr, gray), SCALE))
    expected["T1_psnr_y_mean"] = np.mean(scores)
    expected["T1_psnr_y_std"] = np.std(scores)
    assert expected["T1_psnr_y_std"] > 0  # the draws differ
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, abs=2e-6), key
    assert int(row["channels_in_source"]) == (1 if gray else 3)


def test_api_round_trip_gives_the_reported_numbers(tiny, images, evaluated):
    model, params = tiny
    _, _, rows = evaluated
    rescaler = Rescaler(model, params, bucket=None)
    hr = images["b"]
    lr = rescaler.downscale(hr)
    np.testing.assert_array_equal(lr, _direct_lr(model, params, hr))
    for t, label in ((0.0, "T0"), (0.5, "T0.5")):
        rec = rescaler.upscale(lr, key=ev.draw_key(7, 1, 0), temperature=t)
        with Image.open(evaluated[0] / "tiny" / f"recon_{label}" / "b.png") as im:
            stored = np.asarray(im)
        np.testing.assert_array_equal(rec, stored)
    assert float(rows["b"]["T0_psnr_y_mean"]) == pytest.approx(psnr_y(rescaler.upscale(lr, temperature=0), hr, 2))


def test_summary_means_and_temperatures(evaluated):
    out, summary, rows = evaluated
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["datasets"]["tiny"]["images"] == 3
    recon = on_disk["datasets"]["tiny"]["reconstruction"]
    assert [r["temperature"] for r in recon.values()] == [0.0, 0.5, 1.0]
    assert [r["draws"] for r in recon.values()] == [1, 2, 2]
    assert recon["T0"]["psnr_y_std_draws"] == 0.0
    for label in recon:
        mean = np.mean([float(r[f"{label}_psnr_y_mean"]) for r in rows.values()])
        assert recon[label]["psnr_y_mean"] == pytest.approx(mean, abs=1e-5)
    bicubic = np.mean([float(r["bicubic_psnr_y"]) for r in rows.values()])
    assert on_disk["datasets"]["tiny"]["bicubic"]["psnr_y"] == pytest.approx(bicubic, abs=1e-5)
    table = (out / "summary.md").read_text()
    assert "T=0.5" in table and "| tiny | 3 |" in table and f"{recon['T1']['psnr_y_mean']:.2f}" in table
    assert summary["protocol"]["crop_border"] == SCALE


def test_folder_datasets_and_bad_names(tmp_path, images):
    folder = tmp_path / "my_images"
    folder.mkdir()
    for name, img in images.items():
        Image.fromarray(img).save(folder / f"{name}.png")
    name, source = ev.open_dataset(str(folder), data_dir=tmp_path / "tfds")
    assert name == "my_images" and len(source) == 3
    assert {source[i]["name"]: source[i]["channels_in_source"] for i in range(3)} == {"a": 3, "b": 3, "gray": 1}
    with pytest.raises(ValueError, match="neither a folder nor a known set"):
        ev.open_dataset("set6")


def test_figures_without_saved_images(tiny, images, tmp_path):
    model, params = tiny
    source = ArrayImageSource([images["a"]], ["a"])
    ev.evaluate(model, params, {"tiny": source}, tmp_path, draws=1, save_images=False, progress=False)
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "tiny" / "comparison.png").is_file()
    assert not (tmp_path / "tiny" / "lr").exists()


def test_invalid_arguments(tiny, tmp_path):
    model, params = tiny
    source = ArrayImageSource([np.zeros((16, 16, 3), np.uint8)])
    with pytest.raises(ValueError, match="temperatures"):
        ev.evaluate(model, params, {"x": source}, tmp_path, temperatures=[-1.0])
    with pytest.raises(ValueError, match="draws"):
        ev.evaluate(model, params, {"x": source}, tmp_path, draws=0)


def test_hr_folders_are_named_after_their_set(tmp_path, images):
    for set_name in ("Set5", "Set14"):
        (tmp_path / set_name / "HR").mkdir(parents=True)
        Image.fromarray(images["a"]).save(tmp_path / set_name / "HR" / "a.png")
    names = [ev.open_dataset(str(tmp_path / s / "HR"), data_dir=tmp_path / "tfds")[0] for s in ("Set5", "Set14")]
    assert names == ["Set5", "Set14"]
    assert ev.dataset_name(str(tmp_path / "Set5" / "hr")) == "Set5"
    assert ev.dataset_name("set5") == "set5" and ev.dataset_name(str(tmp_path / "Set5")) == "Set5"


def test_sets_of_the_same_name_are_refused(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'set5' and './Set5' would both be named"):
        ev.check_unique_names(["set5", "./Set5"])
    with pytest.raises(ValueError, match="'a/HR' and 'b/a' would both be named 'a'"):
        ev.check_unique_names(["a/HR", "b/a"])
    ev.check_unique_names(["a/HR", "b/HR"])
    # the CLI refuses before loading the checkpoint (which does not exist)
    assert ev.main(["--checkpoint", "missing", "--datasets", "set5", "./Set5", "--out", "out"]) == 2
    model, params = tiny
    source = ArrayImageSource([np.zeros((16, 16, 3), np.uint8)])
    with pytest.raises(ValueError, match="'x' and 'X'"):
        ev.evaluate(model, params, [("x", source), ("X", source)], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_max_images_is_refused_up_front(tiny, tmp_path):
    model, params = tiny
    source = ArrayImageSource([np.zeros((16, 16, 3), np.uint8)])
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_images"):
            ev.evaluate(model, params, {"x": source}, tmp_path / "out", max_images=bad, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        ev.build_parser().parse_args(["--checkpoint", "c", "--datasets", "d", "--out", "o", "--max-images", "0"])


def test_images_too_small_to_score_are_skipped(tiny, images, tmp_path, caplog):
    model, params = tiny
    # scale 2: a side needs >= 6 px (mod-crop, then 2 px shaved per side); 5 -> 4 leaves nothing, 1 < scale
    small = {"thin": images["a"][:5], "dot": images["a"][:1, :1], "edge": images["a"][:6]}
    source = ArrayImageSource([images["a"], *small.values()], ["a", *small])
    with caplog.at_level("WARNING", logger="irrm_jax.evaluate"):
        summary = ev.evaluate(model, params, {"tiny": source}, tmp_path, temperatures=[0.0], progress=False)
    assert "'thin' (5x30)" in caplog.text and "'dot' (1x1)" in caplog.text and "edge" not in caplog.text
    on_disk = json.loads((tmp_path / "summary.json").read_text())["datasets"]["tiny"]
    assert on_disk["images"] == 2 == summary["datasets"]["tiny"]["images"]
    assert on_disk["skipped"] == [
        {"image": "thin", "height": 5, "width": 30},
        {"image": "dot", "height": 1, "width": 1},
    ]
    with (tmp_path / "per_image.csv").open() as f:
        assert [row["image"] for row in csv.DictReader(f)] == ["a", "edge"]
    assert "skipped (too small to score): thin, dot" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match="none of its 2 image"):
        ev.evaluate(
            model,
            params,
            {"small": ArrayImageSource([small["thin"], small["dot"]])},
            tmp_path / "none",
            temperatures=[0.0],
            progress=False,
        )
