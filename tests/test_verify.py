"""The `irrm_jax.verify` command: reports, tolerance exit status, images and checkpoints."""

import jax
import numpy as np
import pytest
from PIL import Image

from irrm_jax import verify
from irrm_jax.models import InvertibleRescaler, model_config
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


def test_latent_sensitivity_at_initialisation():
    # Every coupling starts as the identity: the network is the Haar transform, y the 2x2 means, z the details.
    model = InvertibleRescaler(model_config("irrm_s", 2, blocks_per_level=(1,), nf=8))
    params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
    flat = np.full((16, 16, 3), 0.5)  # no detail: z = 0 exactly
    result = verify.latent_sensitivity(model, params, [flat])
    assert result["z_rms"] == 0.0
    assert result["8-bit LR, z = 0 (T = 0)"] == result["8-bit LR, own z"] == np.inf  # 0.5 survives 8 bits exactly
    assert result["8-bit LR, z ~ N(0, I) (T = 1)"] < 20  # unit-variance detail on a flat image
    ramp = np.linspace(0.1, 0.9, 32)[:, None, None] * np.ones((32, 32, 3))
    result = verify.latent_sensitivity(model, params, [ramp])
    assert result["z_rms"] > 0
    assert result["8-bit LR, own z"] > 45  # storing y in 8 bits costs at most about one level
    assert result["8-bit LR, own z"] > result["8-bit LR, z = 0 (T = 0)"]  # the ramp's detail lives in z
    assert 30 < result["exact LR, own z + 0.01 N(0, I)"] < 50  # the identity passes the 0.01 noise on


def test_sensitivity_flag_prints_its_table(capsys):
    assert verify.main(["--model", "irrm_s", "--scale", "2", "--size", "16", "--sensitivity"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction PSNR-Y (dB), the forward's z has rms" in out
    for case in verify.SENSITIVITY_CASES:
        assert f"| {case} | " in out


def test_pallas_dense_blocks_stay_exactly_invertible():
    results = verify.verify(model_config("irn", 2, blocks_per_level=(1,)), size=8, batch=1, dense_pallas=True)
    assert 0 < results["float32"]["max"] < verify.FLOAT32_TOLERANCE
    assert 0 <= results["float64"]["max"] < verify.FLOAT64_TOLERANCE
