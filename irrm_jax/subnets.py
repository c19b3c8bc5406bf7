"""Coupling sub-networks: IRN's DenseBlock and IRRM's Enhanced Block (spec sections 3.3 and 5.3).

A sub-network maps (N, h, w, c_in) to (N, h, w, features). It is never inverted, so it may be any network; its
last convolution starts at zero so that every coupling block starts as the identity. Parameters are float32;
``dtype`` sets the compute dtype of the convolutions (e.g. bfloat16, or float64 for exactness checks); the
output comes back in that dtype and the coupling casts it to its own (float32 or float64) arithmetic.

Speed option ``channel_multiple``: odd channel counts (3, 35, 67, 99, 131, 45, ...) keep GPU tensor cores idle,
so convolutions can pad their input and output channels with zeros to a multiple (e.g. 8). The stored
parameters keep their true shapes (so counts and checkpoints are unchanged); zero rows and columns are inserted
at apply time, which gives exactly the same function.

Weight packs: with the kernel options (``pallas``, ``cuda``) a block packs its kernels and biases as the kernels
read them at every call. Where the variables carry the ``WEIGHT_PACKS`` collection (inference:
`irrm_jax.models.with_weight_packs`), a block reads its pack from there instead.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from irrm_jax import dense_kernels, enhanced_kernels

# PyTorch's xavier_normal_ (untruncated normal, std = sqrt(2 / (fan_in + fan_out))) scaled by 0.1, as IRN
# initialises conv1..conv4: variance 0.01 / fan_avg. JAX's glorot_normal would draw from a truncated normal.
xavier_normal_x01 = nn.initializers.variance_scaling(0.01, "fan_avg", "normal")


WEIGHT_PACKS = "weight_packs"
"""The variable collection of the kernel blocks' packed weights (one ``pack`` a block), for inference."""


def prepared_pack(module: nn.Module, build: Callable[[], Any]) -> Any:
    """A kernel block's weight pack from the ``WEIGHT_PACKS`` collection, or None where it holds none. Where that
    collection is mutable (outside ``init``), ``build()`` is stored there first."""
    if module.is_mutable_collection(WEIGHT_PACKS) and not module.is_initializing():
        module.put_variable(WEIGHT_PACKS, "pack", build())
    return module.get_variable(WEIGHT_PACKS, "pack")


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_channels(x: jax.Array, multiple: int, dtype: Any) -> tuple[jax.Array, tuple[int, int]]:
    """x cast to dtype with zero channels appended up to a multiple; also (position, count) of the zeros."""
    c_in = x.shape[-1]
    pad = round_up(c_in, multiple) - c_in
    x = x.astype(dtype)
    if pad:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad)))
    return x, (c_in, pad)


def conv3x3(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    """3x3, stride 1, zero SAME padding, NHWC x HWIO, computed in dtype."""
    return jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class Conv3x3(nn.Module):
    """A 3x3, stride-1, SAME-padded convolution with bias (PyTorch's padding=1), parameters as `nn.Conv`'s.

    Attributes:
      features: output channels.
      in_features: true input channels (the kernel's shape); the input may carry extra zero channels, given
        by `zero_channels` as (position, count) of the padding in the input.
      dtype: compute dtype.
      zero_init: start with a zero kernel (the last conv of every sub-network).
      channel_multiple: pad the output channels to this multiple with zero kernel columns, then slice them off.
    """

    features: int
    in_features: int
    dtype: Any = jnp.float32
    zero_init: bool = False
    zero_channels: tuple[int, int] = (0, 0)
    channel_multiple: int = 1

    def setup(self):
        init = nn.initializers.zeros if self.zero_init else xavier_normal_x01
        self.kernel = self.param("kernel", init, (3, 3, self.in_features, self.features), jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel
        position, count = self.zero_channels
        if count:
            zeros = jnp.zeros((3, 3, count, self.features), kernel.dtype)
            kernel = jnp.concatenate([kernel[:, :, :position], zeros, kernel[:, :, position:]], axis=2)
        out_padded = round_up(self.features, self.channel_multiple)
        if out_padded != self.features:
            kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 0), (0, out_padded - self.features)))
        if x.shape[-1] != kernel.shape[2]:
            raise ValueError(f"Conv3x3 expected {kernel.shape[2]} input channels, got {x.shape[-1]}.")
        return conv3x3(x, kernel, self.dtype)[..., : self.features] + self.bias.astype(self.dtype)


class DenseBlock(nn.Module):
    """IRN's DenseBlock: five 3x3 convs, each seeing the concatenation of the input and all earlier outputs.

    Children are named ``conv1``..``conv5`` like the official state dict; the concatenation order is
    [input, x1, x2, x3, x4], as in the official code, so converted weights line up.

    Attributes:
      features: output channels.
      growth: channels added by each of conv1..conv4 (IRN: 32).
      dtype: compute dtype of the convolutions.
      channel_multiple: pad the input (and hence every concatenation) and the output to this channel multiple.
      outward: speed option (same function and parameters): when a feature map appears, one convolution computes
        its contributions to every later conv and adds them to running sums, instead of convolving ever larger
        concatenations (input channels 3..137 -> 32 or 3..32 -> 137..9). Ignores ``channel_multiple``.
      pallas: speed option (same function and parameters): run the block as Pallas GPU kernels
        (`irrm_jax.dense_kernels`). Ignores ``channel_multiple`` and ``outward``.
      cuda: speed option: ``pallas`` with the convolutions and kernel gradients in CUDA (`irrm_jax.cuda_kernels`;
        NVIDIA GPUs, bfloat16 or float32). Implies ``pallas``.
    """

    features: int
    growth: int = 32
    dtype: Any = jnp.float32
    channel_multiple: int = 1
    outward: bool = False
    pallas: bool = False
    cuda: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        kernels = self.pallas or self.cuda
        multiple = 1 if self.outward or kernels else self.channel_multiple
        x, zero_channels = pad_channels(x, multiple, self.dtype)
        convs = [
            Conv3x3(
                self.features if i == 5 else self.growth,
                c_in + (i - 1) * self.growth,
                self.dtype,
                zero_init=i == 5,
                zero_channels=zero_channels,
                channel_multiple=multiple if i == 5 else 1,
                name=f"conv{i}",
            )
            for i in range(1, 6)
        ]
        if kernels:
            weights = [c.kernel for c in convs], [c.bias for c in convs]
            pack = prepared_pack(self, lambda: dense_kernels.dense_block_pack(*weights, self.dtype, self.cuda))
            return dense_kernels.dense_block(x, *weights, self.dtype, self.cuda, pack)
        if self.outward:
            return self._outward(x, convs)
        feats = [x]
        for conv in convs[:-1]:
            feats.append(nn.leaky_relu(conv(jnp.concatenate(feats, axis=-1)), 0.2))
        return convs[-1](jnp.concatenate(feats, axis=-1))

    def _outward(self, x: jax.Array, convs: list[Conv3x3]) -> jax.Array:
        """The same sums as __call__, grouped by input: source j (x, x1, ..., x4) feeds conv j+1..5 at once."""
        starts = [0, x.shape[-1]] + [x.shape[-1] + j * self.growth for j in range(1, 5)]
        pending = None  # running sums of the convs not finished yet, concatenated along channels
        feat = x
        for j in range(5):
            rows = slice(starts[j], starts[j + 1])
            kernel = jnp.concatenate([conv.kernel[:, :, rows] for conv in convs[j:]], axis=-1)
            contribution = conv3x3(feat, kernel, self.dtype)
            pending = contribution if pending is None else pending + contribution
            if j < 4:
                feat = nn.leaky_relu(pending[..., : self.growth] + convs[j].bias.astype(self.dtype), 0.2)
                pending = pending[..., self.growth :]
        return pending + convs[4].bias.astype(self.dtype)


class EnhancedBlock(nn.Module):
    """IRRM's Enhanced Block (spec 5.3, reconstructed): a residual conv block with a zero-initialised output.

    h = conv_in(x); repeated n_res times: h = h + conv_b(act(conv_a(h))); out = conv_out(act(h)).

    Attributes:
      features: output channels.
      width: hidden channels (``nf``).
      n_res: number of residual units (each two 3x3 convs and a short skip).
      dtype: compute dtype of the convolutions.
      channel_multiple: pad the input and the output to this channel multiple.
      pallas: speed option (same function and parameters): run the block on the DenseBlock's Pallas GPU kernels
        (`irrm_jax.enhanced_kernels`). Ignores ``channel_multiple``.
      cuda: speed option: ``pallas`` with the CUDA kernels (`irrm_jax.cuda_kernels`; NVIDIA GPUs, bfloat16 or
        float32). Implies ``pallas``.
      unit_kernel: speed option, with ``cuda``: the last residual unit as one kernel in inference from a weight pack
        (`irrm_jax.cuda_kernels.residual_unit`).
    """

    features: int
    width: int = 32
    n_res: int = 1
    dtype: Any = jnp.float32
    channel_multiple: int = 1
    pallas: bool = False
    cuda: bool = False
    unit_kernel: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c_in = x.shape[-1]
        kernels = self.pallas or self.cuda
        multiple = 1 if kernels else self.channel_multiple
        x, zero_channels = pad_channels(x, multiple, self.dtype)
        convs = [Conv3x3(self.width, c_in, self.dtype, zero_channels=zero_channels, name="conv_in")]
        for i in range(self.n_res):
            convs.append(Conv3x3(self.width, self.width, self.dtype, name=f"res{i}_conv_a"))
            convs.append(Conv3x3(self.width, self.width, self.dtype, name=f"res{i}_conv_b"))
        convs.append(
            Conv3x3(self.features, self.width, self.dtype, zero_init=True, channel_multiple=multiple, name="conv_out")
        )
        if kernels:
            weights = [c.kernel for c in convs], [c.bias for c in convs]
            pack = prepared_pack(self, lambda: enhanced_kernels.enhanced_block_pack(*weights, self.dtype, self.cuda))
            return enhanced_kernels.enhanced_block(x, *weights, self.dtype, self.cuda, pack, self.unit_kernel)
        h = convs[0](x)
        for i in range(self.n_res):
            h = h + convs[2 * i + 2](nn.leaky_relu(convs[2 * i + 1](h), 0.2))
        return convs[-1](nn.leaky_relu(h, 0.2))
