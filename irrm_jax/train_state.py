"""The training state and how the training config builds the model, optimiser and state.

`TrainState` is a pytree of arrays only (so it jits, shards and checkpoints as one tree): the number of updates
done, the parameters, the optimiser state and the base PRNG key (raw key data), from which every step derives
its own key with ``fold_in(base, step)``, so a resumed run draws the same random numbers.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Sharding

from irrm_jax.losses import LossConfig
from irrm_jax.models import InvertibleRescaler, build_model
from irrm_jax.optimizer import create_optimizer, learning_rate_schedule

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
      step: int32 scalar, the number of updates done.
      params: the model's ``'params'`` collection (float32).
      opt_state: the optax state.
      rng: uint32 key data of the base PRNG key (`jax.random.key_data`).
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    rng: jax.Array

    def step_key(self) -> jax.Array:
        """The PRNG key of the update about to be made: ``fold_in(base, step)``."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def model_from_config(config: ml_collections.ConfigDict) -> InvertibleRescaler:
    """Builds ``config.model``: ``name``, ``scale``, ``compute_dtype``, the speed options ``channel_multiple``,
    ``fuse_gh``, ``dense_outward``, ``dense_pallas`` and ``dense_cuda``, and ``overrides`` (RescalerConfig fields;
    None values keep the variant's).

    Raises:
      ValueError: for an unknown compute dtype, model name, scale or override.
    """
    m = config.model
    if m.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"model.compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {m.compute_dtype!r}.")
    overrides = {k: v for k, v in (m.get("overrides") or {}).items() if v is not None}
    try:
        return build_model(
            m.name,
            m.scale,
            compute_dtype=COMPUTE_DTYPES[m.compute_dtype],
            channel_multiple=m.get("channel_multiple", 1),
            fuse_gh=m.get("fuse_gh", False),
            dense_outward=m.get("dense_outward", False),
            dense_pallas=m.get("dense_pallas", False),
            dense_cuda=m.get("dense_cuda", False),
            **overrides,
        )
    except TypeError as e:  # an unknown RescalerConfig field
        raise ValueError(f"invalid model.overrides {overrides}: {e}") from e


def optimizer_from_config(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Builds the optimiser of `irrm_jax.optimizer` from ``config.optim``."""
    return create_optimizer(**config.optim.to_dict())


def schedule_from_config(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning-rate schedule of ``config.optim`` (the one `optimizer_from_config` applies)."""
    o = config.optim
    return learning_rate_schedule(o.learning_rate, o.milestones, o.gamma)


def loss_config_from_config(config: ml_collections.ConfigDict) -> LossConfig:
    """The `LossConfig` of ``config.loss``."""
    return LossConfig(**config.loss.to_dict())


def init_train_state(model: InvertibleRescaler, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state: parameters from ``model.init`` and a base key, both derived from ``seed``.

    Pure, so it can be jitted with output shardings or traced by `jax.eval_shape`.
    """
    init_key, base_key = jax.random.split(jax.random.key(seed))
    side = 2 * model.scale  # parameters do not depend on the image size
    params = model.init(init_key, jnp.zeros((1, side, side, 3), jnp.float32))["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(base_key),
    )


def create_train_state(
    model: InvertibleRescaler, optimizer: optax.GradientTransformation, seed: int, sharding: Sharding
) -> TrainState:
    """`init_train_state` computed directly into ``sharding`` (every process gets the same values)."""
    return jax.jit(init_train_state, static_argnums=(0, 1, 2), out_shardings=sharding)(model, optimizer, seed)


def abstract_train_state(
    model: InvertibleRescaler, optimizer: optax.GradientTransformation, sharding: Sharding
) -> TrainState:
    """The state's shapes and dtypes with ``sharding`` on every leaf, without computing it (a restore target)."""
    shapes = jax.eval_shape(functools.partial(init_train_state, model, optimizer, 0))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
