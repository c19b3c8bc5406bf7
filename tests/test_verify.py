"""The `irrm_jax.verify` command: reports, tolerance exit status, images and checkpoints."""

import numpy as np
import pytest
from PIL import Image

from irrm_jax import verify
from irrm_jax.models import model_config
from tests.test_convert import official_state_dict


def test_random_weights_within_tolerance(capsys):
    assert verify.main(["--model", "irrm_s", "--scale", "2", "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "irrm_s x2, random non-zero weights, 2 random images" in out
    assert "| float32 |" in out and "| float64 |" in out and "| float32 default precision |" in out
    assert "all max errors within tolerance" in out


def test_tolerance_zero_fails(capsys):
    assert verify.main(["--model", "irrm_s", "--scale", "2", "--size", "16", "--tolerance", "0"]) == 1
    assert "ABOVE tolerance in: float32" in capsys.readouterr().out


def test_results_are_real_errors():
    results = verify.verify(model_config("irrm_s", 2), size=16)
    assert 0 < results["float32"]["max"] < verify.FLOAT32_TOLERANCE
    assert 0 <= results["float64"]["max"] < verify.FLOAT64_TOLERANCE
    assert results["float64"]["max"] < results["float32"]["max"]


def test_images_and_official_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rng.integers(0, 256, (13, 10, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 12), dtype=np.uint8)).save(tmp_path / "imgs" / "gray.png")
    np.savez(tmp_path / "irn_x2.npz", **official_state_dict(2))
    args = ["--images", str(tmp_path / "imgs"), "--checkpoint", str(tmp_path / "irn_x2.npz")]
    assert verify.main(args) == 0
    out = capsys.readouterr().out
    assert "irn x2, checkpoint" in out and "2 images from" in out and "irn_x2.npz" in out


def test_usage_errors():
    with pytest.raises(SystemExit):
        verify.main(["--model", "irrm_s"])
    with pytest.raises(SystemExit):
        verify.main(["--model", "irrm_s", "--scale", "8"])
    with pytest.raises(SystemExit):
        verify.main([])


def test_checkpoint_mismatch_is_a_usage_error(tmp_path):
    np.savez(tmp_path / "irn_x2.npz", **official_state_dict(2))
    with pytest.raises(SystemExit):
        verify.main(["--checkpoint", str(tmp_path / "irn_x2.npz"), "--scale", "4"])
    with pytest.raises(SystemExit):
        verify.main(["--checkpoint", str(tmp_path / "missing")])
