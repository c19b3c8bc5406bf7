"""Official IRN checkpoint conversion, checked against a NumPy reference of the official forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irrm_jax.convert import convert_state_dict, load_official_irn
from irrm_jax.models import build_model


def official_state_dict(scale: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict with the official names and OIHW shapes (spec 3.4), written from the spec alone."""
    rng = np.random.default_rng(seed)
    state, index = {}, 0
    for level in range(scale.bit_length() - 1):
        c_in = 3 * 4**level
        haar = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32)
        state[f"operations.{index}.haar_weights"] = np.tile(haar.reshape(4, 1, 2, 2), (c_in, 1, 1, 1))
        channels = 4 * c_in
        for op in range(index + 1, index + 9):
            for net, (i, o) in {"F": (channels - 3, 3), "G": (3, channels - 3), "H": (3, channels - 3)}.items():
                for k in range(1, 6):
                    cin, cout = i + 32 * (k - 1), (32 if k < 5 else o)
                    std = 0.5 / np.sqrt(9 * cin)
                    state[f"operations.{op}.{net}.conv{k}.weight"] = rng.normal(0, std, (cout, cin, 3, 3))
                    state[f"operations.{op}.{net}.conv{k}.bias"] = rng.normal(0, 0.01, (cout,))
        index += 9
    return {k: v.astype(np.float32) for k, v in state.items()}


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d(k=3, stride=1, padding=1) on NHWC input with an OIHW weight."""
    h, wd = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(
        np.einsum("nhwi,oi->nhwo", xp[:, dy : dy + h, dx : dx + wd], w[:, :, dy, dx])
        for dy in range(3)
        for dx in range(3)
    )
    return out + b


def np_dense_block(x, state, prefix):
    lrelu = lambda t: np.where(t > 0, t, 0.2 * t)  # noqa: E731
    feats = [x]
    for k in range(1, 5):
        feats.append(
            lrelu(
                np_conv(np.concatenate(feats, -1), state[f"{prefix}.conv{k}.weight"], state[f"{prefix}.conv{k}.bias"])
            )
        )
    return np_conv(np.concatenate(feats, -1), state[f"{prefix}.conv5.weight"], state[f"{prefix}.conv5.bias"])


def np_irn_forward(x: np.ndarray, state: dict) -> np.ndarray:
    """The official InvRescaleNet forward (Haar via the stored filters, InvBlockExp with clamp 1), in float64."""
    ops = sorted({int(k.split(".")[1]) for k in state})
    for i in ops:
        if f"operations.{i}.haar_weights" in state:
            w = state[f"operations.{i}.haar_weights"].astype(np.float64)  # (4C, 1, 2, 2), out channel 4c + k
            n, h, wd, c = x.shape
            blocks = x.reshape(n, h // 2, 2, wd // 2, 2, c)
            torch_order = np.stack(
                [
                    np.einsum("nidje,de->nij", blocks[..., ch], w[4 * ch + k, 0]) / 4
                    for ch in range(c)
                    for k in range(4)
                ],
                -1,
            )
            x = (
                torch_order.reshape(n, h // 2, wd // 2, c, 4)
                .transpose(0, 1, 2, 4, 3)
                .reshape(n, h // 2, wd // 2, 4 * c)
            )
        else:
            x1, x2 = x[..., :3], x[..., 3:]
            y1 = x1 + np_dense_block(x2, state, f"operations.{i}.F")
            s = 2 / (1 + np.exp(-np_dense_block(y1, state, f"operations.{i}.H"))) - 1
            x = np.concatenate([y1, x2 * np.exp(s) + np_dense_block(y1, state, f"operations.{i}.G")], -1)
    return x


@pytest.mark.parametrize("scale", [2, 4])
def test_converted_weights_reproduce_the_official_forward(scale):
    state = official_state_dict(scale)
    params = convert_state_dict(state)
    model = build_model("irn", scale)
    x = np.random.default_rng(1).uniform(size=(1, 2 * scale, 2 * scale, 3))
    lr, z = jax.jit(model.apply)({"params": params}, jnp.asarray(x, jnp.float32))
    expected = np_irn_forward(x, {k: v.astype(np.float64) for k, v in state.items()})
    np.testing.assert_allclose(np.concatenate([lr, z], -1), expected, atol=2e-5)
    assert np.abs(expected[..., :3] - x.reshape(1, 2, scale, 2, scale, 3).mean((2, 4))).max() > 1e-2


def test_module_prefix_and_npz(tmp_path):
    state = {f"module.{k}": v for k, v in official_state_dict(2).items()}
    np.savez(tmp_path / "irn_x2.npz", **state)
    params = load_official_irn(tmp_path / "irn_x2.npz")
    assert params["operations_1"]["F"]["conv1"]["kernel"].shape == (3, 3, 9, 32)
    np.testing.assert_array_equal(
        params["operations_8"]["G"]["conv5"]["kernel"],
        state["module.operations.8.G.conv5.weight"].transpose(2, 3, 1, 0),
    )


def test_errors_list_every_problem():
    state = official_state_dict(2)
    del state["operations.3.G.conv2.bias"]
    state["operations.5.F.conv1.weight"] = np.zeros((32, 10, 3, 3), np.float32)
    state["operations.9.extra.weight"] = np.zeros(1, np.float32)
    state["operations.0.haar_weights"] = -state["operations.0.haar_weights"]
    with pytest.raises(ValueError) as info:
        convert_state_dict(state)
    message = str(info.value)
    assert "missing keys (1)" in message and "operations.3.G.conv2.bias" in message
    assert "unexpected keys (1)" in message and "operations.9.extra.weight" in message
    assert "operations.5.F.conv1.weight: expected (32, 9, 3, 3), got (32, 10, 3, 3)" in message
    assert "Haar filters differing" in message and "operations.0.haar_weights" in message


def test_not_an_irn_state_dict():
    with pytest.raises(ValueError, match="no 'operations"):
        convert_state_dict({"conv.weight": np.zeros(3)})


def test_missing_file_and_pth_without_torch(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_official_irn(tmp_path / "IRN_x4.pth")
    (tmp_path / "IRN_x4.pth").write_bytes(b"\0")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'irrm_jax\[torch\]'"):
        load_official_irn(tmp_path / "IRN_x4.pth")
