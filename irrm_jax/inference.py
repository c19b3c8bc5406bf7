"""Jitted inference for images of any size: HR -> 8-bit LR (`Rescaler.downscale`) and LR -> HR (`Rescaler.upscale`).

>>> rescaler = Rescaler(model, params)                       # or Rescaler.from_checkpoint(path)
>>> lr = rescaler.downscale(hr)                              # uint8 (H, W, 3) -> uint8 (ceil(H/s), ceil(W/s), 3)
>>> hr_hat = rescaler.upscale(lr, key=jax.random.key(1), temperature=1.0, hr_size=hr.shape[:2])

Conventions:

* The LR is quantised as in training (spec 3.6): ``round(255 * clip(LR, 0, 1))``, round half to even, in float32 on
  the device; `upscale` feeds it back as ``LR_uint8 / 255``, exactly the value the training step inverts.
* z ~ N(0, T^2 I) with T the temperature (spec 3.8; T = 0 gives z = 0). Image ``i`` of a call draws its z from
  ``jax.random.fold_in(key, i)`` at its padded shape (given one key per image, it draws as if upscaled alone with
  ``key[i]``: from ``fold_in(key[i], 0)``), so a draw does not depend on the other images or on the batching.
* Padding: an image is padded at the bottom and right in numpy's ``'reflect'`` mode (mirror without repeating the
  edge pixel) up to a multiple of ``bucket`` (or only of the scale when ``bucket`` is None), and every output is
  cropped back: the LR to ``ceil(H / s) x ceil(W / s)``, the HR to its original size (``hr_size``; default ``s`` times
  the LR size). A given z is padded with zeros (its mean).
* Shape buckets: one compiled executable per (direction, batch size, padded height, padded width); a batch is
  padded to the next power of two, or to ``max_batch`` when that is smaller, so no call runs more than ``max_batch``
  images and the batch sizes compiled are the powers of two below ``max_batch`` and ``max_batch`` itself. Images
  whose padded shapes agree share a batch and an executable, so a folder of photos of slightly different sizes
  compiles once per bucket (`compile_count` says how often).
* Exactness: the networks are fully convolutional, so a bucket's padding changes the pixels near the right and
  bottom borders a little (the network sees mirrored content instead of its zero padding). With ``bucket=None``
  and sizes the scale divides, each image runs at its own size, as in the IRN test protocol; then
  ``lr, z = r.downscale(x, quantize=False, return_z=True)`` and ``r.upscale(lr, z=z, as_uint8=False)`` return ``x``
  to float32 round-off. `irrm_jax.evaluate` uses ``bucket=None``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax.metrics import to_uint8
from irrm_jax.models import VARIANTS, build_model, with_dense_cuda, with_weight_packs

PAD_MODE = "reflect"
"""numpy ``np.pad`` mode used to extend images to their bucket (bottom and right edges)."""

DEFAULT_BUCKET = 64
"""Default shape bucket: padded heights and widths are multiples of this."""

ImageInput = np.ndarray | jax.Array | Sequence[np.ndarray]


def add_dense_pallas_flag(parser: argparse.ArgumentParser) -> None:
    """``--dense-pallas`` and ``--dense-cuda``, shared by irrm-rescale, eval.py and verify (`load_model_and_params`'
    ``dense_pallas`` and ``dense_cuda``)."""
    parser.add_argument(
        "--dense-pallas",
        action="store_true",
        help="run the sub-networks (IRN's DenseBlocks, IRRM's Enhanced Blocks) as Pallas kernels (same results; faster "
        "on NVIDIA GPUs, slow elsewhere)",
    )
    parser.add_argument(
        "--dense-cuda",
        action="store_true",
        help="--dense-pallas with the kernels in CUDA, each coupling's G and H as one call (same results; "
        "NVIDIA H100/H200, built with nvcc on first use; the fastest for large images)",
    )


def load_model_and_params(
    checkpoint: str | Path,
    model_name: str | None = None,
    scale: int | None = None,
    compute_dtype: Any = None,
    dense_pallas: bool | None = None,
    dense_cuda: bool | None = None,
) -> tuple[nn.Module, Any, str, int]:
    """Loads a model and its parameters from a training workdir / checkpoint or an official IRN state dict.

    Args:
      checkpoint: a training workdir or checkpoint directory (model and scale come from its config), or an official
        IRN ``.pth`` / ``.npz`` state dict (then ``model_name`` must be 'irn' or None and the scale is taken from
        ``scale`` or inferred from the weights).
      model_name: the expected variant; a mismatch with the checkpoint raises.
      scale: the expected scale; a mismatch with the checkpoint raises.
      compute_dtype: the sub-network compute dtype of the rebuilt model (default: the training config's, float32
        for IRN state dicts).
      dense_pallas: run the sub-networks as Pallas GPU kernels (`irrm_jax.dense_kernels`, `enhanced_kernels`; the
        same function);
        None keeps the training config's choice (off for IRN state dicts).
      dense_cuda: ``dense_pallas`` with the kernels in CUDA (`irrm_jax.cuda_kernels`) and each
        coupling's G and H as one call of each kernel (`irrm_jax.models.with_dense_cuda`); None likewise.

    Returns:
      ``(model, params, model_name, scale)``.

    Raises:
      FileNotFoundError: the checkpoint does not exist.
      ValueError: unknown model name, or a model / scale that disagrees with the checkpoint.
    """
    path = Path(checkpoint)
    if model_name is not None and model_name not in VARIANTS:
        raise ValueError(f"unknown model {model_name!r}; valid names: {', '.join(VARIANTS)}.")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a training workdir or an IRN .pth/.npz file).")
    if path.is_file():
        if path.suffix not in (".pth", ".npz"):
            raise ValueError(f"checkpoint file {path} is not an official IRN state dict (.pth or .npz).")
        if model_name not in (None, "irn"):
            raise ValueError(f"{path} is an official IRN state dict, so --model must be 'irn', not {model_name!r}.")
        from irrm_jax.convert import load_official_irn

        params = load_official_irn(path)
        found_scale = _irn_scale(params)
        if scale is not None and scale != found_scale:
            raise ValueError(f"{path} holds an IRN x{found_scale}, not x{scale}.")
        model = build_model(
            "irn",
            found_scale,
            compute_dtype=compute_dtype or jnp.float32,
            dense_pallas=bool(dense_pallas),
        )
        return with_dense_cuda(model) if dense_cuda else model, params, "irn", found_scale
    from irrm_jax.checkpointing import restore_model

    model, params, config = restore_model(path)
    found_name, found_scale = config.model.name, int(config.model.scale)
    for what, wanted, found in (("model", model_name, found_name), ("scale", scale, found_scale)):
        if wanted is not None and wanted != found:
            raise ValueError(f"checkpoint {path} holds {found_name} x{found_scale}; the requested {what} was {wanted}.")
    if compute_dtype is not None:
        model = model.clone(compute_dtype=compute_dtype)
    if dense_pallas is not None:
        model = model.clone(dense_pallas=dense_pallas)
    if dense_cuda is not None:
        model = with_dense_cuda(model) if dense_cuda else model.clone(dense_cuda=False)
    return model, params, found_name, found_scale


def _irn_scale(params: Any) -> int:
    """The scale of an IRN parameter tree: its last coupling's F sees the 3 s^2 - 3 channels of z."""
    last = max(params, key=lambda name: int(name.rsplit("_", 1)[1]))
    z_channels = np.shape(params[last]["F"]["conv1"]["kernel"])[2]
    return math.isqrt((z_channels + 3) // 3)


class Rescaler:
    """A model and its parameters, with jitted `downscale` / `upscale` for images of any size.

    Args:
      model: an `irrm_jax.models.InvertibleRescaler`.
      params: its parameter tree (with or without the outer ``{'params': ...}``).
      bucket: pad heights and widths up to a multiple of this (a multiple of the scale) so that images of nearby
        sizes share one compiled executable; None pads only to a multiple of the scale (exact shapes).
      max_batch: the largest batch run at once (smaller batches are padded to a power of two, at most this).

    Raises:
      ValueError: for a bucket that is not a positive multiple of the scale, or max_batch < 1.
    """

    def __init__(self, model: nn.Module, params: Any, *, bucket: int | None = DEFAULT_BUCKET, max_batch: int = 8):
        self.model = model
        self.scale = int(model.scale)
        if bucket is not None and (bucket < 1 or bucket % self.scale):
            raise ValueError(f"bucket must be a positive multiple of the scale {self.scale} or None, got {bucket}.")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}.")
        self.bucket = bucket
        self.max_batch = max_batch
        self.z_channels = 3 * self.scale**2 - 3
        params = params["params"] if isinstance(params, dict) and set(params) == {"params"} else params
        # the kernel blocks' weights packed once here, not in every call (models.with_weight_packs)
        self._variables = with_weight_packs(model, jax.device_put({"params": params}))
        self._executables: dict[tuple, Any] = {}

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        model_name: str | None = None,
        scale: int | None = None,
        **kwargs: Any,
    ) -> Rescaler:
        """A `Rescaler` for a checkpoint (see `load_model_and_params`); kwargs go to the constructor."""
        model, params, _, _ = load_model_and_params(checkpoint, model_name, scale)
        return cls(model, params, **kwargs)

    @property
    def compile_count(self) -> int:
        """How many executables have been compiled so far (one per direction, batch size and padded shape)."""
        return len(self._executables)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The HR size an image of ``height x width`` is padded to before it enters the network."""
        multiple = self.bucket or self.scale
        return _round_up(height, multiple), _round_up(width, multiple)

    def downscale(self, images: ImageInput, *, quantize: bool = True, return_z: bool = False) -> Any | tuple[Any, Any]:
        """HR image(s) -> LR image(s) (and optionally the latent z).

        Args:
          images: one image (H, W, 3) or (H, W) (gray, replicated to RGB), a batch (N, H, W, 3), or a list of images
            of any sizes; uint8, or float in [0, 1].
          quantize: return the 8-bit LR (uint8, quantised as in training); False returns the float32 LR unclipped.
          return_z: also return z, float32 of shape (ceil(H/s), ceil(W/s), 3s^2 - 3) per image.

        Returns:
          The LR in the input's layout (one array, a batch array, or a list); ``(lr, z)`` with ``return_z``.

        Raises:
          ValueError: for an unsupported dtype, shape or channel count.
        """
        batch, layout = _as_image_list(images, "HR image")
        outputs: list = [None] * len(batch)
        zs: list = [None] * len(batch)
        s = self.scale
        for shape, indices in _group_by(batch, lambda im: self.padded_size(*im.shape[:2])).items():
            for chunk in _chunks(indices, self.max_batch):
                x = np.stack([_pad(batch[i], shape, PAD_MODE) for i in _padded_chunk(chunk, self.max_batch)])
                run = self._executable("down", x.shape, quantize)
                lr, z = jax.device_get(run(self._variables, x))
                for j, i in enumerate(chunk):
                    h, w = -(-batch[i].shape[0] // s), -(-batch[i].shape[1] // s)
                    outputs[i] = lr[j, :h, :w]
                    zs[i] = z[j, :h, :w]
        lr_out = _restore_layout(outputs, layout)
        return (lr_out, _restore_layout(zs, layout)) if return_z else lr_out

    def upscale(
        self,
        lr: ImageInput,
        *,
        key: jax.Array | None = None,
        temperature: float = 1.0,
        z: ImageInput | None = None,
        hr_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
        as_uint8: bool = True,
    ) -> Any:
        """LR image(s) -> HR image(s), with z drawn at a temperature or given.

        Args:
          lr: one LR image (h, w, 3), a batch (N, h, w, 3) or a list of any sizes; uint8 (an 8-bit LR) or float.
          key: PRNG key of the draw (default ``jax.random.key(0)``); image i uses ``fold_in(key, i)``. An array of N
            keys (shape (N,), e.g. from ``jax.random.split``) gives image i the z it would get upscaled alone with
            ``key[i]``, i.e. drawn from ``fold_in(key[i], 0)``.
          temperature: z ~ N(0, temperature^2 I); 0 gives z = 0. Ignored when ``z`` is given.
          z: the latent(s), float (h, w, 3s^2 - 3) per image, in the layout of ``lr``.
          hr_size: the HR (height, width) to crop to, one pair for all images or one per image; each must satisfy
            ``s * (h - 1) < H <= s * h``. Default ``(s * h, s * w)``.
          as_uint8: convert to uint8 as the metrics do (clip, x255, round half to even); False returns float32.

        Returns:
          The HR image(s) in the layout of ``lr``.

        Raises:
          ValueError: for unsupported shapes or dtypes, a z or hr_size that does not fit the LR, or a key array
            whose length is not the number of images.
        """
        batch, layout = _as_image_list(lr, "LR image")
        zs = None if z is None else _as_z_list(z, len(batch), [im.shape[:2] for im in batch], self.z_channels)
        sizes = hr_sizes(hr_size, [im.shape[:2] for im in batch], self.scale)
        key = _as_key(key, len(batch))
        outputs: list = [None] * len(batch)
        s = self.scale
        groups = _group_by(batch, lambda im: self.padded_size(s * im.shape[0], s * im.shape[1]))
        for hr_shape, indices in groups.items():
            lr_shape = (hr_shape[0] // s, hr_shape[1] // s)
            for chunk in _chunks(indices, self.max_batch):
                padded = _padded_chunk(chunk, self.max_batch)
                x = np.stack([_pad(batch[i], lr_shape, PAD_MODE) for i in padded])
                if zs is None:
                    per_image = key.ndim == 1
                    keys = key[np.asarray(padded)] if per_image else key  # image i: fold_in(key[i], 0) or (key, i)
                    positions = np.asarray([0] * len(padded) if per_image else padded, np.uint32)
                    run = self._executable("up_sample", x.shape, per_image)
                    hr = run(self._variables, x, keys, positions, np.float32(temperature))
                else:
                    zb = np.stack([_pad(zs[i], lr_shape, "constant") for i in padded])
                    run = self._executable("up_given", x.shape, False)
                    hr = run(self._variables, x, zb)
                hr = np.asarray(jax.device_get(hr))
                for j, i in enumerate(chunk):
                    h, w = sizes[i]
                    out = hr[j, :h, :w]
                    outputs[i] = to_uint8(out) if as_uint8 else out
        return _restore_layout(outputs, layout)

    def _executable(self, kind: str, shape: tuple[int, ...], option: bool):
        """The compiled ``kind`` for ``shape``; ``option``: quantise ('down') or one key per image ('up_sample')."""
        cache_key = (kind, shape, option)
        quantize = per_image = option
        if cache_key not in self._executables:
            model, zc = self.model, self.z_channels
            x_spec = jax.ShapeDtypeStruct(shape, jnp.float32)
            if kind == "down":

                def fn(variables, x):
                    lr, z = model.apply(variables, x)
                    if quantize:
                        lr = jnp.round(jnp.clip(lr, 0.0, 1.0) * 255.0).astype(jnp.uint8)
                    return lr, z

                args = (x_spec,)
            elif kind == "up_given":

                def fn(variables, lr, z):
                    return model.apply(variables, lr, z, method=model.inverse)

                args = (x_spec, jax.ShapeDtypeStruct(shape[:-1] + (zc,), jnp.float32))
            else:

                def fn(variables, lr, keys, positions, temperature):
                    keys = jnp.broadcast_to(keys, positions.shape)
                    draw = jax.vmap(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), lr.shape[1:-1] + (zc,)))
                    z = temperature * draw(keys, positions)
                    return model.apply(variables, lr, z, method=model.inverse)

                key_spec = jax.eval_shape(
                    lambda: jax.random.split(jax.random.key(0), shape[0]) if per_image else jax.random.key(0)
                )
                positions_spec = jax.ShapeDtypeStruct((shape[0],), jnp.uint32)
                args = (x_spec, key_spec, positions_spec, jax.ShapeDtypeStruct((), jnp.float32))
            self._executables[cache_key] = jax.jit(fn).lower(self._variables, *args).compile()
        return self._executables[cache_key]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _to_float_rgb(image: Any, what: str) -> np.ndarray:
    """One image as float32 (H, W, 3) in [0, 1] (uint8 divided by 255; gray replicated)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"each {what} must be (H, W, 3) RGB or (H, W) gray, got shape {image.shape}.")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"each {what} must be uint8 or float in [0, 1], got dtype {image.dtype}.")
    return image.astype(np.float32)


def _as_image_list(images: ImageInput, what: str) -> tuple[list[np.ndarray], str]:
    """Normalises the input to a list of float32 (H, W, 3) images and remembers the layout ('one', 'batch', 'list')."""
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError(f"got an empty list of {what}s.")
        return [_to_float_rgb(im, what) for im in images], "list"
    arr = np.asarray(images)
    if arr.ndim == 4:
        if arr.shape[0] == 0:
            raise ValueError(f"got an empty batch of {what}s.")
        return [_to_float_rgb(im, what) for im in arr], "batch"
    if arr.ndim in (2, 3):
        return [_to_float_rgb(arr, what)], "one"
    raise ValueError(f"expected one {what} (H, W, 3), a batch (N, H, W, 3) or a list; got shape {arr.shape}.")


def _as_z_list(z: ImageInput, count: int, lr_sizes: list[tuple[int, int]], channels: int) -> list[np.ndarray]:
    zs = list(z) if isinstance(z, list | tuple) or np.ndim(z) == 4 else [z]
    if len(zs) != count:
        raise ValueError(f"got {len(zs)} latents for {count} LR images.")
    out = []
    for zi, (h, w) in zip(zs, lr_sizes, strict=True):
        zi = np.asarray(zi, np.float32)
        if zi.shape != (h, w, channels):
            raise ValueError(f"z must have shape {(h, w, channels)} for an LR of {h}x{w}, got {zi.shape}.")
        out.append(zi)
    return out


def hr_sizes(hr_size: Any, lr_sizes: list[tuple[int, int]], scale: int) -> list[tuple[int, int]]:
    """The HR size of each LR: ``hr_size`` (one pair, or one per LR) or ``scale`` times the LR size.

    Raises:
      ValueError: for a count that does not match, or a size outside ``(scale * (n - 1), scale * n]``.
    """
    if hr_size is None:
        return [(scale * h, scale * w) for h, w in lr_sizes]
    sizes = [tuple(hr_size)] * len(lr_sizes) if np.ndim(hr_size) == 1 else [tuple(s) for s in hr_size]
    if len(sizes) != len(lr_sizes):
        raise ValueError(f"got {len(sizes)} HR sizes for {len(lr_sizes)} LR images.")
    for (hh, ww), (h, w) in zip(sizes, lr_sizes, strict=True):
        if not (scale * (h - 1) < hh <= scale * h and scale * (w - 1) < ww <= scale * w):
            raise ValueError(
                f"HR size {hh}x{ww} does not fit an LR of {h}x{w} at x{scale}: the height must be in "
                f"({scale * (h - 1)}, {scale * h}] and the width in ({scale * (w - 1)}, {scale * w}]."
            )
    return [(int(hh), int(ww)) for hh, ww in sizes]


def _group_by(batch: list[np.ndarray], key_fn) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(batch):
        groups.setdefault(key_fn(image), []).append(i)
    return groups


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _pad(image: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    pad = ((0, shape[0] - image.shape[0]), (0, shape[1] - image.shape[1]), (0, 0))
    return np.pad(image, pad, mode=mode) if any(p[1] for p in pad) else image


def _padded_chunk(chunk: list[int], max_batch: int) -> list[int]:
    """The chunk's indices with the last repeated up to the next power of two, capped at ``max_batch``.

    Bounds the batch sizes compiled (powers of two below ``max_batch``, and ``max_batch``) without ever running a
    batch larger than ``max_batch``.
    """
    n = len(chunk)
    target = max(n, min(1 << (n - 1).bit_length(), max_batch))
    return chunk + [chunk[-1]] * (target - n)


def _as_key(key: jax.Array | None, count: int) -> jax.Array:
    """A typed PRNG key, shape () (one for all images) or (count,) (one per image)."""
    key = jax.random.key(0) if key is None else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw uint32 key data from jax.random.PRNGKey
        key = jax.random.wrap_key_data(key)
    if key.shape not in ((), (count,)):
        raise ValueError(f"key must be one PRNG key or one per image ({count}), got key array of shape {key.shape}.")
    return key


def _restore_layout(outputs: list[np.ndarray], layout: str) -> Any:
    if layout == "one":
        return outputs[0]
    if layout == "batch":
        return np.stack(outputs)
    return outputs
