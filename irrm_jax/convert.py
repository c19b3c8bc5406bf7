"""Conversion of official IRN PyTorch checkpoints (spec section 3.4) into our parameter tree.

The official state dict is flat: ``operations.{i}.haar_weights`` (frozen, shape (4C, 1, 2, 2)) and
``operations.{i}.{F,G,H}.conv{1..5}.{weight,bias}`` with OIHW kernels. Our tree mirrors it
(``operations_{i}/F/conv1/kernel`` in HWIO), so conversion is a rename, a transpose and checks: every key present,
no unexpected key, every shape right, and the Haar filters equal to the fixed pattern. torch is needed only to
read ``.pth`` files (``pip install irrm_jax[torch]``); a ``.npz`` of the same keys works without it.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax.haar import official_haar_weights
from irrm_jax.models import build_model


def _flax_to_torch_name(path: tuple[str, ...]) -> str:
    *modules, leaf = path
    op = modules[0].replace("operations_", "operations.")
    return ".".join([op, *modules[1:], "weight" if leaf == "kernel" else "bias"])


def _haar_ops(blocks_per_level: tuple[int, ...]) -> dict[int, int]:
    """Operation index of each Haar level -> its input channel count (IRN's per-level layout)."""
    index, out = 0, {}
    for level, blocks in enumerate(blocks_per_level):
        out[index] = 3 * 4**level
        index += 1 + blocks
    return out


def expected_state_dict_shapes(scale: int) -> dict[str, tuple[int, ...]]:
    """Official key -> PyTorch shape for IRN at this scale (Haar filters included)."""
    model = build_model("irn", scale)
    x = jax.ShapeDtypeStruct((1, 2 * scale, 2 * scale, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(k.key for k in path)
        shape = leaf.shape if leaf.ndim == 1 else tuple(leaf.shape[i] for i in (3, 2, 0, 1))
        shapes[_flax_to_torch_name(names)] = shape
    for index, channels in _haar_ops(model.config.blocks_per_level).items():
        shapes[f"operations.{index}.haar_weights"] = (4 * channels, 1, 2, 2)
    return shapes


def infer_scale(state_dict: Mapping[str, Any]) -> int:
    """The scale of an official IRN state dict, from its number of Haar levels."""
    levels = sum(1 for k in state_dict if k.removeprefix("module.").endswith("haar_weights"))
    if levels == 0:
        raise ValueError("not an IRN state dict: it has no 'operations.{i}.haar_weights' keys.")
    return 2**levels


def convert_state_dict(state_dict: Mapping[str, Any], scale: int | None = None) -> dict:
    """Official IRN state dict (numpy or torch tensors) -> our parameter tree.

    Raises:
      ValueError: listing missing keys, unexpected keys, wrong shapes and Haar filters that differ from the
        fixed pattern, all at once.
    """
    given = {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state_dict.items()}
    scale = scale or infer_scale(given)
    expected = expected_state_dict_shapes(scale)
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k}: expected {expected[k]}, got {given[k].shape}"
        for k in sorted(set(expected) & set(given))
        if given[k].shape != expected[k]
    ]
    bad_haar = [
        k
        for k in sorted(set(expected) & set(given))
        if k.endswith("haar_weights")
        and given[k].shape == expected[k]
        and not np.array_equal(given[k], official_haar_weights(expected[k][0] // 4))
    ]
    problems = [
        (f"missing keys ({len(missing)})", missing),
        (f"unexpected keys ({len(unexpected)})", unexpected),
        (f"wrong shapes ({len(wrong)})", wrong),
        ("Haar filters differing from the fixed pattern", bad_haar),
    ]
    if any(items for _, items in problems):
        lines = [f"cannot convert this IRN x{scale} state dict:"]
        for title, items in problems:
            if items:
                lines.append(f"  {title}:")
                lines += [f"    {item}" for item in items[:20]]
                if len(items) > 20:
                    lines.append(f"    ... and {len(items) - 20} more")
        raise ValueError("\n".join(lines))
    params: dict = {}
    for key, value in given.items():
        if key.endswith("haar_weights"):
            continue
        op, index, *rest = key.split(".")
        *modules, leaf = rest
        node = params.setdefault(f"{op}_{index}", {})
        for m in modules:
            node = node.setdefault(m, {})
        node["kernel" if leaf == "weight" else "bias"] = value.transpose(2, 3, 1, 0) if leaf == "weight" else value
    return params


def load_official_irn(path: str | Path, scale: int | None = None) -> dict:
    """Reads an official ``IRN_x{2,4,8}.pth`` (needs torch) or a ``.npz`` of its state dict and converts it.

    Raises:
      FileNotFoundError: when the file does not exist.
      ImportError: for a .pth file without torch installed.
      ValueError: as `convert_state_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".npz":
        with np.load(path) as data:
            state = {k: data[k] for k in data.files}
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs PyTorch: pip install 'irrm_jax[torch]' (or save the state dict "
                "as .npz with numpy)."
            ) from e
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v.numpy() for k, v in state.items()}
    return convert_state_dict(state, scale)
