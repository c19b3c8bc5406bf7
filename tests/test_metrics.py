"""Tests for the evaluation metrics, including the published "Bicubic & Bicubic" anchor rows."""

import functools
import math
from pathlib import Path

import numpy as np
import pytest

from irrm_jax.metrics import (
    MeanAccumulator,
    psnr,
    psnr_rgb,
    psnr_y,
    rgb_to_y,
    ssim,
    ssim_y,
    to_uint8,
)
from irrm_jax.resize import bicubic_roundtrip

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def _random_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


# ----------------------------------------------------------------------------- conversions


def test_to_uint8_clips_scales_and_rounds():
    x = np.array([-0.2, 0.0, 0.5, 1.0, 1.3, 100.4 / 255, 100.6 / 255], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 100, 101])
    assert to_uint8(x).dtype == np.uint8
    # Half to even, as numpy's round in IRN's tensor2img: 126.5 -> 126, 127.5 -> 128.
    half = np.array([126.5, 127.5]) / 255.0
    assert np.all(half * 255.0 == [126.5, 127.5])
    np.testing.assert_array_equal(to_uint8(half), [126, 128])
    with pytest.raises(ValueError, match="float"):
        to_uint8(np.zeros(3, np.uint8))


@pytest.mark.parametrize(
    ("rgb", "y"),
    [
        ((255, 0, 0), 16 + 65.481),
        ((0, 255, 0), 16 + 128.553),
        ((0, 0, 255), 16 + 24.966),
        ((255, 255, 255), 235.0),
        ((0, 0, 0), 16.0),
    ],
)
def test_rgb_to_y_pure_colours(rgb, y):
    img = np.array(rgb, np.uint8).reshape(1, 1, 3)
    assert rgb_to_y(img)[0, 0] == pytest.approx(y, abs=1e-12)
    assert rgb_to_y(img / 255.0)[0, 0] == pytest.approx(y, abs=1e-12)  # float in [0, 1]


def test_rgb_to_y_is_not_rounded():
    y = rgb_to_y(np.array([[[10, 20, 30]]], np.uint8))[0, 0]
    assert y == pytest.approx(16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255, abs=1e-12)
    assert y != round(y)
    with pytest.raises(ValueError, match="HxWx3"):
        rgb_to_y(np.zeros((4, 4)))


# ----------------------------------------------------------------------------- PSNR


def test_psnr_constant_offset():
    a = np.full((20, 30, 3), 100, np.uint8)
    b = np.full((20, 30, 3), 110, np.uint8)  # MSE = 100
    expected = 10 * math.log10(255**2 / 100)
    assert expected == pytest.approx(28.130803608679102, abs=1e-12)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-12)
    assert psnr_rgb(a, b, crop=0) == pytest.approx(expected, abs=1e-12)
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(expected, abs=1e-9)


def test_psnr_known_noise_and_identity():
    a = np.full((16, 16), 128.0)
    noise = np.where(np.indices((16, 16)).sum(axis=0) % 2 == 0, 3.0, -3.0)  # MSE = 9
    assert psnr(a, a + noise) == pytest.approx(20 * math.log10(255 / 3), abs=1e-12)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, a[:-1])


def test_psnr_y_uses_the_luma_weights():
    ref = np.full((8, 8, 3), 50, np.uint8)
    pred = ref.copy()
    pred[..., 0] += 10  # only R changes: Y error = 65.481 * 10 / 255
    expected = 20 * math.log10(255 / (65.481 * 10 / 255))
    assert psnr_y(pred, ref, crop=0) == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- SSIM


def _ssim_brute_force(a, b):
    """Direct 2-D windowed SSIM over every 'valid' 11x11 window (independent of the code)."""
    r = np.arange(11) - 5.0
    window = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (window * pa).sum(), (window * pb).sum()
            va = (window * pa * pa).sum() - ma * ma
            vb = (window * pb * pb).sum() - mb * mb
            cov = (window * pa * pb).sum() - ma * mb
            values.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2)))
    return float(np.mean(values))


def test_ssim_identical_is_one():
    a = _random_u8((24, 20)).astype(np.float64)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_constant_images_by_hand():
    # Zero variances: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) everywhere.
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 120.0)
    expected = (2 * 100 * 120 + C1) / (100**2 + 120**2 + C1)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_brute_force_window():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (17, 14)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    assert ssim(a, b) == pytest.approx(_ssim_brute_force(a, b), abs=1e-12)


def test_ssim_matches_scikit_image_gaussian_mode():
    # scikit-image's documented MATLAB-equivalent settings (Wang et al. 2004).
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (40, 33)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 15, a.shape), 0, 255)
    expected = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_ssim_errors():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))
    with pytest.raises(ValueError, match="HxW"):
        ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)))


# ----------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("crop", [2, 4])
def test_crop_is_applied(crop):
    ref = _random_u8((32, 28, 3), seed=5)
    pred = ref.copy()
    border = np.ones(ref.shape[:2], bool)
    border[crop:-crop, crop:-crop] = False
    pred[border] = 255 - pred[border]
    assert psnr_y(pred, ref, crop) == math.inf
    assert psnr_rgb(pred, ref, crop) == math.inf
    assert ssim_y(pred, ref, crop) == pytest.approx(1.0, abs=1e-12)
    assert psnr_y(pred, ref, crop - 1) < 100
    assert ssim_y(pred, ref, crop - 1) < 1.0


def test_single_channel_is_scored_on_its_own_channel():
    ref = _random_u8((24, 24), seed=6)
    pred = np.clip(ref.astype(int) + 5, 0, 255).astype(np.uint8)
    raw_psnr = psnr(pred[2:-2, 2:-2], ref[2:-2, 2:-2])
    raw_ssim = ssim(pred[2:-2, 2:-2].astype(float), ref[2:-2, 2:-2].astype(float))
    assert psnr_y(pred, ref, 2) == pytest.approx(raw_psnr, abs=1e-12)
    assert ssim_y(pred, ref, 2) == pytest.approx(raw_ssim, abs=1e-12)
    assert psnr_y(pred[..., None], ref[..., None], 2) == pytest.approx(raw_psnr, abs=1e-12)
    # Through the Y formula a grey image scores differently (Y = 16 + 219 v / 255).
    grey_rgb = psnr_y(np.repeat(pred[..., None], 3, -1), np.repeat(ref[..., None], 3, -1), 2)
    assert grey_rgb == pytest.approx(raw_psnr - 20 * math.log10(219 / 255), abs=1e-9)


def test_inputs_must_be_uint8_and_same_shape():
    ref = _random_u8((16, 16, 3))
    with pytest.raises(ValueError, match="to_uint8"):
        psnr_y(ref / 255.0, ref, 2)
    with pytest.raises(ValueError, match="same shape"):
        ssim_y(ref[:-1], ref, 2)
    with pytest.raises(ValueError, match="HxWx3"):
        psnr_rgb(_random_u8((16, 16, 2)), _random_u8((16, 16, 2)), 0)
    with pytest.raises(ValueError, match="crop"):
        psnr_y(ref, ref, 8)


def test_accumulator_means_per_image_values():
    acc = MeanAccumulator()
    acc.add({"psnr_y": psnr(np.zeros(4), np.ones(4)), "ssim_y": 0.5})  # MSE 1
    acc.add({"psnr_y": psnr(np.zeros(4), np.full(4, 10.0))})  # MSE 100
    means = acc.means()
    assert means["psnr_y"] == pytest.approx((48.13080360867910 + 28.13080360867910) / 2)
    assert means["psnr_y"] != pytest.approx(10 * math.log10(255**2 / 50.5))  # not of mean MSE
    assert means["ssim_y"] == 0.5
    assert acc.counts() == {"psnr_y": 2, "ssim_y": 1}


# ----------------------------------------------------------------------------- anchor

# "Bicubic & Bicubic" rows of the IRN tables (spec 6.1 and 6.2): PSNR_Y / SSIM_Y.
PUBLISHED = {
    ("Set5", 2): (33.66, 0.9299),
    ("Set14", 2): (30.24, 0.8688),
    ("BSD100", 2): (29.56, 0.8431),
    ("Set5", 4): (28.42, 0.8104),
    ("Set14", 4): (26.00, 0.7027),
    ("BSD100", 4): (25.96, 0.6675),
}


@functools.cache
def _load_dataset(name):
    from PIL import Image

    paths = sorted((DATA_DIR / name / "HR").glob("*.png"))
    images = []
    for path in paths:
        with Image.open(path) as img:
            # 8-bit greyscale stays single-channel (Set14 bridge); everything else RGB.
            images.append(np.asarray(img if img.mode == "L" else img.convert("RGB")))
    return images


@pytest.mark.parametrize(("dataset", "scale"), list(PUBLISHED))
def test_bicubic_baseline_reproduces_published_rows(dataset, scale):
    if not (DATA_DIR / dataset / "HR").is_dir():
        pytest.skip(f"benchmark images not found under {DATA_DIR}")
    acc = MeanAccumulator()
    for hr in _load_dataset(dataset):
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        _, sr = bicubic_roundtrip(hr, scale)
        acc.add({"psnr_y": psnr_y(sr, hr, scale), "ssim_y": ssim_y(sr, hr, scale)})
    means = acc.means()
    want_psnr, want_ssim = PUBLISHED[dataset, scale]
    assert means["psnr_y"] == pytest.approx(want_psnr, abs=0.02)
    assert means["ssim_y"] == pytest.approx(want_ssim, abs=0.001)
