"""IRN's optimiser (spec 3.7 and 8.7): Adam with coupled L2 weight decay, global-norm clipping, multistep decay.

The chain, in order::

    clip_by_global_norm(clip_norm)          # PyTorch clip_grad_norm_ before the step (optax's, norm below)
    add_decayed_weights(weight_decay)       # torch.optim.Adam's weight_decay: wd * theta added to the gradient
    scale_by_adam(b1, b2, eps)
    scale(-learning_rate(count))            # count = updates done so far, from 0

This is coupled L2, not AdamW: the decay passes through Adam's moments. The learning rate is multiplied by
``gamma`` at each milestone: with milestones [100k, 200k, ...] updates 1..100,000 use the initial rate and
update 100,001 the first decayed one (PyTorch's MultiStepLR stepped after each update).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def global_norm(tree) -> jax.Array:
    """The L2 norm of all entries of all leaves (float32), summed as one flat vector.

    The same value as `optax.tree.norm` up to rounding, in one reduction: optax reduces each leaf on its own, which
    on GPUs is one small kernel per leaf (IRN x4 has 480 parameter arrays; the training step takes four norms).
    """
    flat = jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in jax.tree.leaves(tree)])
    return jnp.sqrt(jnp.sum(jnp.square(flat)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` (updates scaled by max_norm / norm when norm >= max_norm), with `global_norm`."""

    def update(updates, state, params=None):
        del params
        norm = global_norm(updates)
        return jax.tree.map(
            lambda t: jnp.where(norm < max_norm, t, t / norm.astype(t.dtype) * max_norm), updates
        ), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def learning_rate_schedule(learning_rate: float, milestones: Sequence[int], gamma: float) -> optax.Schedule:
    """Piecewise-constant rate: ``learning_rate * gamma**k`` once ``count >= milestones[k-1]``.

    Raises:
      ValueError: for a non-positive rate, a gamma outside (0, 1], or milestones that are not increasing
        positive integers.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}.")
    milestones = [int(m) for m in milestones]
    if any(m <= 0 for m in milestones) or milestones != sorted(set(milestones)):
        raise ValueError(f"milestones must be strictly increasing positive step counts, got {milestones}.")
    return optax.piecewise_constant_schedule(learning_rate, {m: gamma for m in milestones})


def create_optimizer(
    learning_rate: float = 2e-4,
    milestones: Sequence[int] = (100_000, 200_000, 300_000, 400_000),
    gamma: float = 0.5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-5,
    clip_norm: float = 10.0,
) -> optax.GradientTransformation:
    """The optimiser chain above; defaults are IRN's (the fields of ``config.optim``).

    Raises:
      ValueError: for invalid schedule arguments, a negative weight decay or a non-positive clip norm.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}.")
    schedule = learning_rate_schedule(learning_rate, milestones, gamma)
    return optax.chain(
        clip_by_global_norm(clip_norm),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(schedule),
    )
