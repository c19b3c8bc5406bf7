"""Smoke tests of ``irrm-rescale`` (and of ``eval.py``'s command line) with a tiny trained checkpoint."""

import csv

import numpy as np
import pytest
from PIL import Image

from configs import test as test_config
from irrm_jax import evaluate, lr_files, rescale_cli
from irrm_jax.inference import Rescaler
from irrm_jax.train import train_and_evaluate


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir of the tiny test config (irrm_s x2, one coupling of width 8) after one step."""
    config = test_config.get_config()
    config.data.validation = ""
    config.train.num_steps = 1
    path = tmp_path_factory.mktemp("workdir")
    train_and_evaluate(config, path)
    return path


@pytest.fixture
def photos(tmp_path):
    """A folder with an RGB image whose size the scale does not divide and a grayscale one."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (21, 17, 3), np.uint8)).save(folder / "odd.png")
    Image.fromarray(rng.integers(0, 256, (16, 24), np.uint8)).save(folder / "gray.png")
    return folder


def cli(capsys, *args):
    status = rescale_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_down_up_roundtrip_on_folders(workdir, photos, tmp_path, capsys):
    lr_dir, up_dir, rt_dir = tmp_path / "lr", tmp_path / "up", tmp_path / "rt"
    status, out, _ = cli(capsys, "down", photos, lr_dir, "--checkpoint", workdir, "--model", "irrm_s", "--scale", 2)
    assert status == 0 and "wrote 2 image(s)" in out
    odd = lr_files.read_lr_png(lr_dir / "odd.png")
    assert odd.pixels.shape == (11, 9, 3) and odd.hr_size == (21, 17) and odd.scale == 2 and odd.model == "irrm_s"
    with Image.open(photos / "odd.png") as im:
        hr = np.asarray(im)
    np.testing.assert_array_equal(odd.pixels, Rescaler.from_checkpoint(workdir).downscale(hr))

    status, out, _ = cli(capsys, "up", lr_dir, up_dir, "--checkpoint", workdir, "--temperature", 0.5, "--seed", 3)
    assert status == 0
    with Image.open(up_dir / "odd.png") as a, Image.open(up_dir / "gray.png") as b:
        assert a.size == (17, 21) and b.size == (24, 16)

    args = ("roundtrip", photos, rt_dir, "--checkpoint", workdir, "--temperature", 0, "--bucket", 0, "--batch", 1)
    status, out, _ = cli(capsys, *args)
    assert status == 0 and "PSNR-Y" in out and "mean PSNR-Y" in out
    assert sorted(p.name for p in rt_dir.iterdir()) == ["gray.png", "odd.png"]


def test_single_files_quiet_and_plain_lr(workdir, photos, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    status, out, err = cli(capsys, "down", photos / "odd.png", target, "--checkpoint", workdir, "--quiet")
    assert status == 0 and (target / "odd.png").exists() and "->" not in out + err
    plain = tmp_path / "plain.png"  # an LR without irrm_jax text chunks upscales to 2x its size
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(plain)
    status, _, _ = cli(capsys, "up", plain, tmp_path / "big.png", "--checkpoint", workdir, "--quiet")
    assert status == 0
    with Image.open(tmp_path / "big.png") as im:
        assert im.size == (14, 10)


def test_existing_outputs_need_force(workdir, photos, tmp_path, capsys):
    out_file = tmp_path / "lr.png"
    out_file.write_bytes(b"keep me")
    status, _, err = cli(capsys, "down", photos / "odd.png", out_file, "--checkpoint", workdir)
    assert status == 2 and "--force" in err and out_file.read_bytes() == b"keep me"
    status, _, _ = cli(capsys, "down", photos / "odd.png", out_file, "--checkpoint", workdir, "--force", "--quiet")
    assert status == 0 and lr_files.read_lr_png(out_file).hr_size == (21, 17)


def test_bad_inputs_give_clear_errors(workdir, photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status, _, err = cli(capsys, "down", photos, tmp_path / "lr", "--checkpoint", workdir)
    assert status == 2 and "broken.png" in err and not (tmp_path / "lr").exists()

    status, _, err = cli(capsys, "down", tmp_path / "missing", tmp_path / "x", "--checkpoint", workdir)
    assert status == 2 and "does not exist" in err
    status, _, err = cli(capsys, "down", photos / "odd.png", tmp_path / "x.jpg", "--checkpoint", workdir)
    assert status == 2 and "PNG" in err
    status, _, err = cli(capsys, "down", photos / "odd.png", tmp_path / "x.png", "--checkpoint", tmp_path / "none")
    assert status == 2 and "no checkpoint" in err
    for flag, value in (("--scale", 4), ("--model", "irn")):
        status, _, err = cli(
            capsys, "down", photos / "odd.png", tmp_path / "x.png", "--checkpoint", workdir, flag, value
        )
        assert status == 2 and "irrm_s x2" in err
    with pytest.raises(SystemExit):  # argparse: not a model name
        rescale_cli.main(["down", str(photos), str(tmp_path / "y"), "--checkpoint", str(workdir), "--model", "big"])
    assert "invalid choice" in capsys.readouterr().err

    x4 = tmp_path / "x4.png"
    lr_files.save_lr_png(x4, np.zeros((4, 4, 3), np.uint8), hr_size=(16, 16), scale=4, model="irrm_s")
    status, _, err = cli(capsys, "up", x4, tmp_path / "hr.png", "--checkpoint", workdir)
    assert status == 2 and "x4" in err and "x2" in err


def test_noise_depends_on_seed_and_index_not_batch(workdir, tmp_path, capsys):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a", (6, 5)), ("b", (6, 5)), ("c", (7, 9)), ("d", (6, 5)), ("e", (6, 5))):
        Image.fromarray(rng.integers(0, 256, size + (3,), np.uint8)).save(lr_dir / f"{name}.png")
    outputs = {}
    for batch in (1, 4):
        for command, source in (("up", lr_dir), ("roundtrip", lr_dir)):
            out = tmp_path / f"{command}{batch}"
            args = (command, source, out, "--checkpoint", workdir, "--seed", 3, "--batch", batch, "--quiet")
            assert cli(capsys, *args)[0] == 0
            for f in sorted(out.iterdir()):
                with Image.open(f) as im:
                    outputs[command, batch, f.name] = np.asarray(im)
    for (command, batch, name), image in outputs.items():
        if batch == 1:
            np.testing.assert_array_equal(image, outputs[command, 4, name], err_msg=f"{command} {name}")
    assert not np.array_equal(outputs["up", 1, "a.png"][:12, :10], outputs["up", 1, "b.png"][:12, :10])


def test_lr_whose_stored_hr_size_does_not_fit_is_a_clean_error(workdir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    lr_files.save_lr_png(bad, np.zeros((4, 4, 3), np.uint8), hr_size=(30, 8), scale=2, model="irrm_s")
    status, _, err = cli(capsys, "up", bad, tmp_path / "hr.png", "--checkpoint", workdir)
    assert status == 2 and "bad.png" in err and "does not fit" in err and "Traceback" not in err
    assert not (tmp_path / "hr.png").exists()


def test_eval_command_line(workdir, photos, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--checkpoint", str(workdir), "--datasets", str(photos), "--out", str(out), "--tfds-data-dir"]
    args += [str(tmp_path / "tfds"), "--temperatures", "0", "1", "--draws", "2", "--seed", "1", "--max-images", "1"]
    args += ["--no-images", "--no-figures", "--no-progress", "--bucket", "8"]
    assert evaluate.main(args) == 0
    printed = capsys.readouterr().out
    assert "| photos | 1 |" in printed and "T=1" in printed and str(out) in printed
    with (out / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["gray"] and "T1_psnr_y_std" in rows[0]
    assert not (out / "photos").exists() and not (out / "psnr_vs_temperature.png").exists()
    assert evaluate.main(["--checkpoint", str(workdir), "--datasets", "set6", "--out", str(out)]) == 2
    assert "neither a folder" in capsys.readouterr().err


def test_dense_pallas_flag_gives_the_same_images(tmp_path, capsys, monkeypatch):
    """`--dense-pallas` (IRN's DenseBlocks as Pallas kernels; Pallas' interpreter here) changes no output."""
    from irrm_jax import dense_kernels
    from tests.test_convert import official_state_dict

    calls = []
    kernel_block = dense_kernels.dense_block
    monkeypatch.setattr(dense_kernels, "dense_block", lambda *a, **k: calls.append(1) or kernel_block(*a, **k))

    np.savez(tmp_path / "irn_x2.npz", **official_state_dict(2))
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 10, 3), np.uint8)).save(tmp_path / "a.png")
    outputs = []
    for flag in ([], ["--dense-pallas"]):
        out_path = tmp_path / f"lr{len(flag)}.png"
        args = ("down", tmp_path / "a.png", out_path, "--checkpoint", tmp_path / "irn_x2.npz", "--bucket", 0, *flag)
        assert cli(capsys, *args)[0] == 0
        assert bool(calls) == bool(flag), "the flag switches the DenseBlocks to the Pallas kernels"
        outputs.append(lr_files.read_lr_png(out_path).pixels.astype(int))
    assert np.abs(outputs[0] - outputs[1]).max() <= 1 and np.mean(outputs[0] == outputs[1]) > 0.95


def test_eval_passes_dense_pallas_to_the_model(workdir, tmp_path, monkeypatch):
    seen = []

    def load(*args, **kwargs):
        seen.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(evaluate, "load_model_and_params", load)
    base = ["--checkpoint", str(workdir), "--datasets", str(tmp_path), "--out", str(tmp_path / "out")]
    assert evaluate.main(base) == 2 and evaluate.main([*base, "--dense-pallas"]) == 2
    assert [k["dense_pallas"] for k in seen] == [None, True]
