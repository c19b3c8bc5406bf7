"""Coupling sub-networks: IRN's DenseBlock and IRRM's Enhanced Block (spec sections 3.3 and 5.3).

A sub-network maps (N, h, w, c_in) to (N, h, w, features). It is never inverted, so it may be any network; its
last convolution starts at zero so that every coupling block starts as the identity. Parameters are float32;
``dtype`` sets the compute dtype of the convolutions (e.g. bfloat16, or float64 for exactness checks); the output
comes back in that dtype and the coupling casts it to its own (float32 or float64) arithmetic.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's xavier_normal_ (untruncated normal, std = sqrt(2 / (fan_in + fan_out))) scaled by 0.1, as IRN
# initialises conv1..conv4: variance 0.01 / fan_avg. JAX's glorot_normal would draw from a truncated normal.
xavier_normal_x01 = nn.initializers.variance_scaling(0.01, "fan_avg", "normal")


def conv3x3(features: int, name: str, dtype: Any, zero: bool = False) -> nn.Conv:
    """A 3x3, stride-1, SAME-padded convolution with bias (PyTorch's padding=1)."""
    return nn.Conv(
        features,
        (3, 3),
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.zeros if zero else xavier_normal_x01,
        bias_init=nn.initializers.zeros,
        name=name,
    )


class DenseBlock(nn.Module):
    """IRN's DenseBlock: five 3x3 convs, each seeing the concatenation of the input and all earlier outputs.

    Children are named ``conv1``..``conv5`` like the official state dict; the concatenation order is
    [input, x1, x2, x3, x4], as in the official code, so converted weights line up.

    Attributes:
      features: output channels.
      growth: channels added by each of conv1..conv4 (IRN: 32).
      dtype: compute dtype of the convolutions.
    """

    features: int
    growth: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        feats = [x]
        for i in range(1, 5):
            h = conv3x3(self.growth, f"conv{i}", self.dtype)(jnp.concatenate(feats, axis=-1))
            feats.append(nn.leaky_relu(h, 0.2))
        out = conv3x3(self.features, "conv5", self.dtype, zero=True)(jnp.concatenate(feats, axis=-1))
        return out


class EnhancedBlock(nn.Module):
    """IRRM's Enhanced Block (spec 5.3, reconstructed): a residual conv block with a zero-initialised output.

    h = conv_in(x); repeated n_res times: h = h + conv_b(act(conv_a(h))); out = conv_out(act(h)).

    Attributes:
      features: output channels.
      width: hidden channels (``nf``).
      n_res: number of residual units (each two 3x3 convs and a short skip).
      dtype: compute dtype of the convolutions.
    """

    features: int
    width: int = 32
    n_res: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = conv3x3(self.width, "conv_in", self.dtype)(x.astype(self.dtype))
        for i in range(self.n_res):
            r = nn.leaky_relu(conv3x3(self.width, f"res{i}_conv_a", self.dtype)(h), 0.2)
            h = h + conv3x3(self.width, f"res{i}_conv_b", self.dtype)(r)
        out = conv3x3(self.features, "conv_out", self.dtype, zero=True)(nn.leaky_relu(h, 0.2))
        return out
