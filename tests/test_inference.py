"""Tests of the jitted inference API: exact round trips, padding, shape buckets, batches, quantisation, errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax import inference
from irrm_jax.convert import expected_state_dict_shapes
from irrm_jax.haar import official_haar_weights
from irrm_jax.inference import Rescaler, load_model_and_params
from irrm_jax.models import build_model
from irrm_jax.verify import random_nonzero_params

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture(scope="module")
def tiny():
    """A tiny x2 IRRM with random non-zero weights (at initialisation every coupling is the identity)."""
    model = build_model("irrm_s", 2, blocks_per_level=(1,), nf=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    return model, random_nonzero_params(params, seed=1, gain=0.3)


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("size", [(24, 20), (23, 17)])
def test_true_z_round_trip_gives_the_input_back(tiny, size):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=None)
    x = np.random.default_rng(2).uniform(size=size + (3,)).astype(np.float32)
    lr, z = rescaler.downscale(x, quantize=False, return_z=True)
    assert lr.shape == (-(-size[0] // 2), -(-size[1] // 2), 3) and z.shape == lr.shape[:2] + (9,)
    assert np.abs(lr - x[::2, ::2]).max() > 1e-2  # the weights are not the identity
    back = rescaler.upscale(lr, z=z, hr_size=size, as_uint8=False)
    assert back.shape == x.shape
    np.testing.assert_allclose(back, x, atol=2e-5)


def test_quantised_lr_is_trainings_quantisation(tiny):
    model, params = tiny
    hr = _images([(16, 24)])[0]
    lr = Rescaler(model, params, bucket=None).downscale(hr)
    lr_float, _ = model.apply({"params": params}, jnp.asarray(hr, jnp.float32)[None] / 255.0)
    expected = np.round(np.clip(np.asarray(lr_float[0]), 0, 1) * 255.0).astype(np.uint8)
    assert lr.dtype == np.uint8
    np.testing.assert_array_equal(lr, expected)


def test_upscale_matches_direct_inverse(tiny):
    model, params = tiny
    lr = _images([(8, 12)])[0]
    key = jax.random.key(3)
    rescaler = Rescaler(model, params, bucket=None)
    got = rescaler.upscale(lr, key=key, temperature=0.7, as_uint8=False)
    z = 0.7 * jax.random.normal(jax.random.fold_in(key, 0), (8, 12, 9))
    want = model.apply({"params": params}, jnp.asarray(lr[None], jnp.float32) / 255.0, z[None], method=model.inverse)
    np.testing.assert_allclose(got, np.asarray(want[0]), atol=1e-6)
    zero = rescaler.upscale(lr, z=np.zeros((8, 12, 9), np.float32))
    np.testing.assert_array_equal(rescaler.upscale(lr, temperature=0.0), zero)


@pytest.mark.parametrize("bucket", [None, 32])
def test_sizes_the_scale_does_not_divide_come_back_whole(tiny, bucket):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=bucket)
    hrs = _images([(23, 17), (5, 7), (30, 31)])
    lrs = rescaler.downscale(hrs)
    assert [lr.shape for lr in lrs] == [(12, 9, 3), (3, 4, 3), (15, 16, 3)]
    back = rescaler.upscale(lrs, hr_size=[hr.shape[:2] for hr in hrs])
    assert [b.shape for b in back] == [hr.shape for hr in hrs]
    assert [b.shape for b in rescaler.upscale(lrs)] == [(24, 18, 3), (6, 8, 3), (30, 32, 3)]


def test_one_compilation_per_bucket(tiny):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=32)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        rescaler.downscale(_images([(30, 21)]))
        assert rescaler.compile_count == 1 and len(compiles) == 1
        for sizes in ([(17, 32)], [(32, 32)], [(5, 7)], [(31, 30)]):  # all pad to 32 x 32
            rescaler.downscale(_images(sizes))
        assert rescaler.compile_count == 1 and len(compiles) == 1
        rescaler.downscale(_images([(40, 20)]))  # pads to 64 x 32: a new bucket
        assert rescaler.compile_count == 2 and len(compiles) == 2
        lrs = rescaler.downscale(_images([(20, 20), (30, 8)]))  # same bucket, batch of 2: one new executable
        assert rescaler.compile_count == 3
        for t in (0.0, 0.5, 1.0):  # the temperature is an argument, not a constant
            rescaler.upscale(lrs, temperature=t)
        assert rescaler.compile_count == 4 and len(compiles) == 4
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_batches_and_lists_agree_with_single_images(tiny):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=None, max_batch=4)
    hrs = _images([(16, 16)] * 3)
    batch = rescaler.downscale(np.stack(hrs))  # 3 images, run as a padded batch of 4
    assert batch.shape == (3, 8, 8, 3)
    for i, hr in enumerate(hrs):
        np.testing.assert_array_equal(batch[i], rescaler.downscale(hr))
    as_list = rescaler.downscale(hrs)
    assert isinstance(as_list, list) and all(np.array_equal(a, b) for a, b in zip(as_list, batch, strict=True))
    key = jax.random.key(5)
    ups = rescaler.upscale(batch, key=key)
    np.testing.assert_array_equal(ups[0], rescaler.upscale(batch[0], key=key))  # image i draws fold_in(key, i)
    assert not np.array_equal(ups[0], ups[1])


def test_max_batch_is_never_exceeded(tiny):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=None, max_batch=5)
    hrs = _images([(16, 16)] * 7)  # chunks of 5 and 2: batches of 5 (not padded to 8) and 2
    lrs = rescaler.downscale(hrs)
    ups = rescaler.upscale(lrs, key=jax.random.key(2))
    assert sorted(shape[0] for _, shape, _ in rescaler._executables) == [2, 2, 5, 5]
    rescaler.downscale(hrs[:3])  # 3 images pad to a batch of 4 (< max_batch)
    assert max(shape[0] for _, shape, _ in rescaler._executables) == 5 and rescaler.compile_count == 5
    one_by_one = Rescaler(model, params, bucket=None, max_batch=1)
    np.testing.assert_array_equal(np.stack(lrs), np.stack(one_by_one.downscale(hrs)))
    np.testing.assert_array_equal(np.stack(ups), np.stack(one_by_one.upscale(lrs, key=jax.random.key(2))))


def test_one_key_per_image(tiny):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=None, max_batch=4)
    lrs = _images([(8, 8)] * 3)
    keys = jax.random.split(jax.random.key(7), 3)
    ups = rescaler.upscale(lrs, key=keys)
    for i in range(3):  # image i draws as if upscaled alone with keys[i]
        np.testing.assert_array_equal(ups[i], rescaler.upscale(lrs[i], key=keys[i]))
    assert not np.array_equal(ups[0], ups[1])
    raw = jax.random.key_data(keys)  # raw uint32 keys work as well
    np.testing.assert_array_equal(np.stack(ups), np.stack(rescaler.upscale(lrs, key=raw)))
    with pytest.raises(ValueError, match="one per image"):
        rescaler.upscale(lrs, key=keys[:2])


def test_module_docstring_round_trip_runs(tiny):
    """The exact round trip the module docstring shows (``lr, z = r.downscale(...)`` then ``r.upscale(...)``)."""
    statements = re.findall(r"``((?:lr, z = )?r\.(?:down|up)scale\(.*?\))``", inference.__doc__.replace("\n  ", " "))
    assert len(statements) == 2, statements
    model, params = tiny
    namespace = {"r": Rescaler(model, params, bucket=None)}
    namespace["x"] = x = np.random.default_rng(4).uniform(size=(16, 12, 3)).astype(np.float32)
    exec(statements[0], namespace)
    np.testing.assert_allclose(eval(statements[1], namespace), x, atol=2e-5)


def test_uint8_and_float_inputs_agree(tiny):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=None)
    hr = _images([(12, 12)])[0]
    np.testing.assert_array_equal(rescaler.downscale(hr), rescaler.downscale(hr.astype(np.float32) / 255.0))
    gray = hr[..., 0]
    np.testing.assert_array_equal(rescaler.downscale(gray), rescaler.downscale(np.repeat(gray[..., None], 3, -1)))


def test_invalid_inputs_raise_clear_errors(tiny):
    model, params = tiny
    rescaler = Rescaler(model, params, bucket=None)
    with pytest.raises(ValueError, match="multiple of the scale"):
        Rescaler(model, params, bucket=33)
    with pytest.raises(ValueError, match="uint8 or float"):
        rescaler.downscale(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rescaler.downscale(np.zeros((8, 8, 5), np.uint8))
    lr = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="does not fit an LR"):
        rescaler.upscale(lr, hr_size=(10, 8))
    with pytest.raises(ValueError, match="z must have shape"):
        rescaler.upscale(lr, z=np.zeros((4, 4, 3), np.float32))


def test_load_official_irn_npz(tmp_path):
    rng = np.random.default_rng(0)
    state = {}
    for key, shape in expected_state_dict_shapes(2).items():
        haar = key.endswith("haar_weights")
        value = official_haar_weights(shape[0] // 4) if haar else 0.01 * rng.standard_normal(shape)
        state[key] = np.asarray(value, np.float32)
    path = tmp_path / "IRN_x2.npz"
    np.savez(path, **state)
    model, params, name, scale = load_model_and_params(path)
    assert (name, scale, model.scale) == ("irn", 2, 2)
    np.testing.assert_array_equal(
        params["operations_1"]["F"]["conv1"]["kernel"], state["operations.1.F.conv1.weight"].transpose(2, 3, 1, 0)
    )
    fast, *_ = load_model_and_params(path, dense_cuda=True)  # built, not run: no GPU needed
    assert fast.dense_cuda and fast.fuse_gh, "--dense-cuda runs each coupling's G and H as one call"
    with pytest.raises(ValueError, match="must be 'irn'"):
        load_model_and_params(path, "irrm_s")
    with pytest.raises(ValueError):
        load_model_and_params(path, "irn", 4)
    with pytest.raises(FileNotFoundError):
        load_model_and_params(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unknown model"):
        load_model_and_params(path, "irrm_xl")
