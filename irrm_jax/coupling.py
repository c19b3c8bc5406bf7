"""Invertible coupling layers (spec section 3.2 and 5.3).

`AffineCoupling` is IRN's ``InvBlockExp`` and IRRM's Invertible Residual Block: the first ``split`` channels
(the LR branch) receive only additive updates, the rest an affine update whose log-scale is bounded by
``clamp``. `AdditiveCoupling` is the explicit long skip of an IRRM Residual Downscaling Module. The sub-networks
are never inverted, so any `subnets` module plugs in. All coupling arithmetic runs in float32 (or float64 when
the inputs are float64), whatever the sub-networks' compute dtype.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# Builds a sub-network with the given number of output channels (e.g. functools.partial(DenseBlock, ...)).
SubnetFactory = Callable[..., nn.Module]


class AffineCoupling(nn.Module):
    """y1 = x1 + F(x2);  y2 = x2 * exp(s) + G(y1), with s = clamp * (2 sigmoid(H(y1)) - 1).

    Attributes:
      channels: total channels C of the input.
      subnet: factory called as ``subnet(features=...)`` for F, G and H.
      split: channels of the LR branch x1 (IRN: 3).
      clamp: bound of the log-scale s (IRN: 1.0).
      fuse_gh: evaluate G and H (same input y1, same architecture) as one network vmapped over their stacked
        parameters: XLA turns it into wider and grouped convolutions; the DenseBlock kernels (`dense_kernels`,
        `cuda_kernels`) run one call for both. The same function and parameters, fewer and larger kernels.
    """

    channels: int
    subnet: SubnetFactory
    split: int = 3
    clamp: float = 1.0
    fuse_gh: bool = False

    def setup(self):
        self.F = self.subnet(features=self.split)
        self.G = self.subnet(features=self.channels - self.split)
        self.H = self.subnet(features=self.channels - self.split)

    def _shift_and_log_scale(self, y1: jax.Array) -> tuple[jax.Array, jax.Array]:
        """G(y1) and s = clamp * (2 sigmoid(H(y1)) - 1), in y1's dtype."""
        if self.fuse_gh and not self.is_initializing():
            both = jax.tree.map(lambda g, h: jnp.stack([g, h]), self.G.variables, self.H.variables)
            net = self.subnet(features=self.channels - self.split, parent=None)
            shift, h = jax.vmap(net.apply, in_axes=(0, None))(both, y1)
        else:
            shift, h = self.G(y1), self.H(y1)
        h = h.astype(y1.dtype)
        return shift.astype(y1.dtype), self.clamp * (2.0 * jax.nn.sigmoid(h) - 1.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Forward map (N, h, w, C) -> (N, h, w, C)."""
        x1, x2 = x[..., : self.split], x[..., self.split :]
        y1 = x1 + self.F(x2).astype(x.dtype)
        shift, s = self._shift_and_log_scale(y1)
        return jnp.concatenate([y1, x2 * jnp.exp(s) + shift], axis=-1)

    def inverse(self, y: jax.Array) -> jax.Array:
        """Exact inverse of `__call__`."""
        y1, y2 = y[..., : self.split], y[..., self.split :]
        shift, s = self._shift_and_log_scale(y1)
        x2 = (y2 - shift) * jnp.exp(-s)
        x1 = y1 - self.F(x2).astype(y.dtype)
        return jnp.concatenate([x1, x2], axis=-1)


class AdditiveCoupling(nn.Module):
    """Explicit RDM long skip (spec 5.3): a_out = a + psi(b), b unchanged; inverse a = a_out - psi(b).

    Attributes:
      channels: total channels C of the input.
      subnet: factory for psi (zero-initialised output, so the layer starts as the identity).
      split: channels of the LR branch a.
    """

    channels: int
    subnet: SubnetFactory
    split: int = 3

    def setup(self):
        self.psi = self.subnet(features=self.split)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Forward map (N, h, w, C) -> (N, h, w, C)."""
        a, b = x[..., : self.split], x[..., self.split :]
        return jnp.concatenate([a + self.psi(b).astype(x.dtype), b], axis=-1)

    def inverse(self, y: jax.Array) -> jax.Array:
        """Exact inverse of `__call__`."""
        a, b = y[..., : self.split], y[..., self.split :]
        return jnp.concatenate([a - self.psi(b).astype(y.dtype), b], axis=-1)
