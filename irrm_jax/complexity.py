"""Model size and compute, measured from the modules themselves (nothing typed in).

Parameters are counted from an abstract `init`; multiply-adds are counted by intercepting every `Conv3x3` call
of an abstract forward pass (output positions x 9 x true input channels x output channels; zero padding not counted).
The inverse pass costs the same as the forward.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax.models import VARIANTS, InvertibleRescaler, build_model
from irrm_jax.subnets import Conv3x3


def count_params(model: InvertibleRescaler) -> int:
    """Number of trainable parameters (the frozen Haar filters are not parameters here)."""
    x = jax.ShapeDtypeStruct((1, model.scale * 4, model.scale * 4, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def macs_per_hr_pixel(model: InvertibleRescaler, size: int = 64) -> float:
    """Forward-pass convolution multiply-adds per HR pixel (biases and activations not counted)."""
    total = 0

    def count(next_fun, args, kwargs, context):
        nonlocal total
        if isinstance(context.module, Conv3x3) and context.method_name == "__call__":
            conv, inputs = context.module, args[0]
            positions = int(np.prod(inputs.shape[:-1]))  # stride 1, SAME: one output per input position
            total += positions * 9 * conv.in_features * conv.features
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with nn.intercept_methods(count):
        jax.eval_shape(model.apply, variables, x)
    return total / (size * size)


def model_table() -> str:
    """A Markdown table of every variant: parameters, multiply-adds per HR pixel, and both relative to IRN."""
    rows = [
        "| model | scale | parameters | MACs per HR pixel | params vs IRN | MACs vs IRN |",
        "|---|---|---|---|---|---|",
    ]
    irn = {s: build_model("irn", s) for s in VARIANTS["irn"]}
    irn_stats = {s: (count_params(m), macs_per_hr_pixel(m)) for s, m in irn.items()}
    for name, scales in VARIANTS.items():
        for scale in scales:
            model = build_model(name, scale)
            params, macs = count_params(model), macs_per_hr_pixel(model)
            ref_params, ref_macs = irn_stats[scale]
            rows.append(
                f"| {name} | x{scale} | {params:,} | {macs / 1e3:,.1f}k | "
                f"{100 * params / ref_params:.0f}% | {100 * macs / ref_macs:.0f}% |"
            )
    return "\n".join(rows)
