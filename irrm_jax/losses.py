"""The training objective of IRN, also used for IRRM (spec sections 3.6 and 5.5).

For an HR batch x of N patches, with (LR, z) = f(x):

* ``loss_fit = lambda_fit * mean_n sum_{h,w,c} (LR - LR_bic)^2``: the LR must look like a bicubic
  downscale. ``LR_bic`` is the MATLAB bicubic downscale (`irrm_jax.resize.bicubic_downscale`,
  antialiased, unrounded) **of the HR patch itself**. IRN downscales the whole image and then crops, so
  our reference differs only within about two LR pixels of each patch border (spec 3.7 allows either).
* ``loss_ce = lambda_ce * sum z^2 / N``: z should follow N(0, I) (negative log-likelihood up to a factor
  2 and a constant).
* ``loss_rec = lambda_rec * mean_n sum_{h,w,c} sqrt((x - x_hat)^2 + eps)`` (Charbonnier, eps = 1e-6 inside
  the root), where ``x_hat = f^-1(Q(LR), gaussian_scale * z')`` with a fresh ``z' ~ N(0, I)`` and Q the
  8-bit quantisation with a straight-through gradient.

Every term is a per-sample *sum* averaged over the batch, not a per-pixel mean: the magnitudes matter
because gradients are clipped by global norm. The total is ``loss_fit + loss_rec + loss_ce``.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from irrm_jax.models import InvertibleRescaler
from irrm_jax.resize import bicubic_downscale


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and constants of the objective (config fields ``config.loss.*``).

    Attributes:
      lambda_fit: weight of the LR-fit term; IRN uses scale**2 (4 at x2, 16 at x4).
      lambda_rec: weight of the reconstruction term (IRN: 1).
      lambda_ce: weight of the latent term (IRN: 1).
      charbonnier_eps: the epsilon inside the Charbonnier square root (IRN: 1e-6).
      gaussian_scale: temperature T of the z' drawn for the reconstruction (IRN: 1).
    """

    lambda_fit: float
    lambda_rec: float = 1.0
    lambda_ce: float = 1.0
    charbonnier_eps: float = 1e-6
    gaussian_scale: float = 1.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value >= 0:
                raise ValueError(f"loss {field.name} must be a number >= 0, got {value!r}.")


def quantize(x: jax.Array) -> jax.Array:
    """8-bit quantisation round(255 clip(x, 0, 1)) / 255 (an 8-bit image's values, as floats)."""
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0


def quantize_ste(x: jax.Array) -> jax.Array:
    """`quantize` whose gradient is the identity everywhere.

    The gradient passes straight through the rounding *and* the clipping (IRN's ``Quant``).
    """
    return x + jax.lax.stop_gradient(quantize(x) - x)


def _per_sample_sum(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def lr_fit_loss(lr: jax.Array, lr_reference: jax.Array) -> jax.Array:
    """Batch mean of the per-sample sum of squared differences (unweighted)."""
    return jnp.mean(_per_sample_sum(jnp.square(lr - lr_reference)))


def latent_loss(z: jax.Array) -> jax.Array:
    """Sum of z^2 over every element, divided by the batch size (unweighted)."""
    return jnp.sum(jnp.square(z)) / z.shape[0]


def charbonnier_loss(x: jax.Array, y: jax.Array, eps: float) -> jax.Array:
    """Batch mean of the per-sample sum of sqrt((x - y)^2 + eps) (unweighted)."""
    return jnp.mean(_per_sample_sum(jnp.sqrt(jnp.square(x - y) + eps)))


def rescaling_loss(
    model: InvertibleRescaler,
    params: Any,
    hr: jax.Array,
    key: jax.Array,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The total objective and its weighted terms for one HR batch.

    Args:
      model: the invertible rescaler.
      params: its parameters (the ``'params'`` collection).
      hr: (N, H, W, 3) float32 patches in [0, 1]; H and W divisible by the model's scale.
      key: PRNG key of the z' drawn for the reconstruction (use a fresh one every step).
      config: the loss weights.

    Returns:
      ``(loss, terms)`` with ``terms = {'loss', 'loss_fit', 'loss_rec', 'loss_ce'}``: the total and the
      weighted terms, float32 scalars.
    """
    variables = {"params": params}
    lr, z = model.apply(variables, hr)
    lr_reference = bicubic_downscale(hr, model.scale)
    z_new = config.gaussian_scale * jax.random.normal(key, z.shape, z.dtype)
    hr_rec = model.apply(variables, quantize_ste(lr), z_new, method=model.inverse)
    terms = {
        "loss_fit": config.lambda_fit * lr_fit_loss(lr, lr_reference),
        "loss_rec": config.lambda_rec * charbonnier_loss(hr, hr_rec, config.charbonnier_eps),
        "loss_ce": config.lambda_ce * latent_loss(z),
    }
    terms["loss"] = terms["loss_fit"] + terms["loss_rec"] + terms["loss_ce"]
    return terms["loss"], terms
