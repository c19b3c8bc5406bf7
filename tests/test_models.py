"""Model registry: exact IRN parameter counts, IRRM budgets, compute, configuration and bad-input errors."""

import jax
import jax.numpy as jnp
import pytest

from irrm_jax.complexity import count_params, macs_per_hr_pixel
from irrm_jax.models import RescalerConfig, build_model, model_config


def dense_block_params(c_in: int, c_out: int, gc: int = 32) -> int:
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    return sum(conv(c_in + k * gc, gc) for k in range(4)) + conv(c_in + 4 * gc, c_out)


@pytest.mark.parametrize("scale,expected", [(2, 1_667_952), (4, 4_355_136), (8, 11_119_248)])
def test_irn_parameter_counts_exact(scale, expected):
    assert count_params(build_model("irn", scale)) == expected
    # and the same from the spec's formula, level by level
    per_level = [dense_block_params(3 * 4**k - 3, 3) + 2 * dense_block_params(3, 3 * 4**k - 3) for k in (1, 2, 3)]
    assert 8 * sum(per_level[: scale.bit_length() - 1]) == expected


def test_irn_macs_match_the_spec():
    assert macs_per_hr_pixel(build_model("irn", 2)) == pytest.approx(416.2e3, rel=1e-3)
    assert macs_per_hr_pixel(build_model("irn", 4)) == pytest.approx(583.9e3, rel=1e-3)


def test_irrm_budgets():
    irn = {s: (count_params(build_model("irn", s)), macs_per_hr_pixel(build_model("irn", s))) for s in (2, 4)}
    params = {(n, s): count_params(build_model(n, s)) for n in ("irrm_s", "irrm_m", "irrm_l") for s in (2, 4)}
    assert params["irrm_s", 4] < 1_000_000 and params["irrm_s", 2] < 500_000
    assert params["irrm_m", 2] == pytest.approx(0.42e6, rel=0.1)
    assert params["irrm_m", 4] == pytest.approx(1.09e6, rel=0.1)
    assert params["irrm_l", 2] == pytest.approx(0.6 * irn[2][0], rel=0.1)
    assert params["irrm_l", 4] == pytest.approx(0.6 * irn[4][0], rel=0.1)
    assert macs_per_hr_pixel(build_model("irrm_l", 4)) <= 0.55 * irn[4][1]
    assert params["irrm_s", 4] < params["irrm_m", 4] < params["irrm_l", 4]


def test_parameter_tree_mirrors_official_names():
    params = jax.eval_shape(build_model("irn", 4).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    assert sorted(params, key=lambda k: int(k.split("_")[1])) == [
        f"operations_{i}" for i in list(range(1, 9)) + list(range(10, 18))
    ]
    assert set(params["operations_10"]) == {"F", "G", "H"}
    assert set(params["operations_10"]["F"]) == {f"conv{i}" for i in range(1, 6)}
    assert params["operations_10"]["F"]["conv1"]["kernel"].shape == (3, 3, 45, 32)
    assert params["operations_10"]["G"]["conv5"]["kernel"].shape == (3, 3, 131, 45)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: irn, irrm_s, irrm_m, irrm_l"):
        build_model("irrm_xl", 4)
    with pytest.raises(ValueError, match="valid scales: 2, 4"):
        build_model("irrm_s", 8)


def test_overrides_and_config_validation():
    assert model_config("irrm_m", 4, blocks_per_level=[1, 1]).blocks_per_level == (1, 1)
    with pytest.raises(ValueError, match="needs 2 entries"):
        RescalerConfig(scale=4, blocks_per_level=(8,))
    with pytest.raises(ValueError, match="power of two"):
        RescalerConfig(scale=3, blocks_per_level=(8,))
    with pytest.raises(ValueError, match="haar_mode must be one of"):
        model_config("irrm_s", 2, haar_mode="sideways")
    with pytest.raises(ValueError, match="must divide"):
        model_config("irrm_s", 2, rdms_per_level=3)


@pytest.fixture(scope="module")
def tiny():
    model = build_model("irrm_s", 4, blocks_per_level=(1, 1), nf=4)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return model, variables


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 10, 8, 3), "multiples of 4, got 10x8"),
        ((1, 8, 6, 3), "multiples of 4, got 8x6"),
        ((1, 8, 8, 1), r"got \(1, 8, 8, 1\); convert grayscale or RGBA"),
        ((1, 8, 8, 4), r"got \(1, 8, 8, 4\); convert grayscale or RGBA"),
        ((8, 8, 3), "NHWC batch"),
    ],
)
def test_bad_input_shapes(tiny, shape, message):
    model, variables = tiny
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.apply, variables, jnp.zeros(shape))


def test_integer_images_rejected(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match="float array with values in"):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 8, 8, 3), jnp.uint8))


def test_inverse_checks_z_shape(tiny):
    model, variables = tiny
    lr = jnp.zeros((1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"z must have shape \(1, 2, 2, 45\)"):
        jax.eval_shape(lambda v: model.apply(v, lr, jnp.zeros((1, 2, 2, 9)), method=model.inverse), variables)
    with pytest.raises(ValueError, match="expected LR of shape"):
        jax.eval_shape(lambda v: model.apply(v, lr[..., :1], jnp.zeros((1, 2, 2, 45)), method=model.inverse), variables)
