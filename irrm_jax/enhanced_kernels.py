"""IRRM's Enhanced Block on the DenseBlock's kernels (speed options ``dense_pallas`` / ``dense_cuda``): the same
function and parameters as `subnets.EnhancedBlock`.

Every convolution of the block (conv_in, each residual unit's conv_a and conv_b, conv_out) is one `dense_kernels`
convolution on the flat layout with its bias (and conv_a's LeakyReLU) fused. The last unit's residual add and the
LeakyReLU before conv_out are fused into conv_b's epilogue (``bias_residual_leaky``; in bfloat16 its sum is rounded
once, where separate ops rounded each step), conv_in also writes the TF32 copy of its output that conv_a reads
(``with_operand``), and the other units' residual adds are elementwise XLA ops on the flat arrays (zero outside the
pixels stays zero). In inference from weight packs the last unit may be one kernel (`Ops.residual_unit`), which
takes conv_in's output alone. The backward (`jax.custom_vjp`) is built from the same kernels: the transposed
convolutions (LeakyReLU's backward fused) and the kernel gradients, the residual gradients added by XLA. With
``dense_cuda`` the float32 convolutions take TF32 operands, as the DenseBlock's (`irrm_jax.cuda_kernels`): the
residual stream itself stays float32, its copies read by the convolutions are rounded (backward, its gradient starts
from conv_out's transposed convolution, whose ``leaky_grad`` epilogue stores TF32 values, and adds float32 from
there).
"""

import functools
from collections.abc import Sequence

import jax

from irrm_jax.dense_kernels import (
    SLOPE,
    FlatLayout,
    Ops,
    WeightPack,
    block_pack,
    flat_bias,
    flat_kernels,
    kernel_block,
    layer_grads,
    pack_weights,
)


def _forward(layout, ops, x, pack, units, fuse_last=False):
    """The block's output and what its backward reads: the convolutions' inputs (as they read them), in order.
    ``fuse_last`` (inference): the last residual unit in one call where ``ops`` has one that applies
    (`Ops.residual_unit`; its hidden map is then not among the inputs)."""
    inputs = [ops.operand(x)]
    fused = fuse_last and ops.residual_unit is not None  # the last unit offered to the one kernel
    # conv_in's output and its TF32 copy (the first unit's conv_a reads it), unless the one-kernel unit takes h alone
    conv_in = functools.partial(ops.conv, inputs[:1], pack, ["w0.0"], layout, "bias", "b0")
    h, h_operand = (conv_in(), None) if fused and units == 1 else conv_in(with_operand=True)
    last_input = None  # conv_out's: LeakyReLU(h), as the kernels take it
    for i in range(units):
        a, b = 2 * i + 1, 2 * i + 2
        if fused and i == units - 1:
            last_input = ops.residual_unit(h, pack, (a, b), layout)
            if last_input is not None:
                break
        inputs.append(h_operand if i == 0 and h_operand is not None else ops.operand(h))
        inputs.append(ops.conv(inputs[-1:], pack, [f"w{a}.0"], layout, "bias_leaky", f"b{a}"))
        if i < units - 1:
            h = h + ops.conv(inputs[-1:], pack, [f"w{b}.0"], layout, "bias", f"b{b}")
        else:  # the last sum and LeakyReLU in conv_b's epilogue
            last_input = ops.conv(inputs[-1:], pack, [f"w{b}.0"], layout, "bias_residual_leaky", f"b{b}", residual=h)
    inputs.append(ops.operand(jax.nn.leaky_relu(h, SLOPE)) if last_input is None else last_input)
    last = 2 * units + 1
    return ops.conv(inputs[-1:], pack, [f"w{last}.0"], layout, "bias", f"b{last}"), inputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def enhanced_block_flat(layout: FlatLayout, ops: Ops, x: jax.Array, kernels: tuple, biases: tuple) -> jax.Array:
    """The Enhanced Block on a flat input: h = conv_in(x); per unit h = h + conv_b(LeakyReLU(conv_a(h))); out =
    conv_out(LeakyReLU(h)); ``kernels`` (each a 1-tuple of a (9, c, cout) kernel, as `dense_kernels.pack_weights`
    takes them) and ``biases`` in that order (2 units + 2 of each). Computed by ``ops`` (`dense_kernels.PALLAS` or
    `irrm_jax.cuda_kernels.CUDA`); the output's gradient must be zero outside the pixels, like every flat array."""
    return _forward(layout, ops, x, pack_weights(ops, kernels, biases), (len(kernels) - 2) // 2)[0]


def _enhanced_block_fwd(layout, ops, x, kernels, biases):
    pack = pack_weights(ops, kernels, biases)
    out, inputs = _forward(layout, ops, x, pack, (len(kernels) - 2) // 2)
    return out, (inputs, pack)


def _enhanced_block_bwd(layout, ops, residuals, g):
    inputs, pack = residuals
    units, last = (len(inputs) - 2) // 2, len(inputs) - 1
    grads = [None] * len(inputs)  # the gradients of each convolution's output (conv_a's before its LeakyReLU)
    grads[last] = ops.operand(g)
    # dh: the gradient of the residual stream h, through conv_out's LeakyReLU (whose sign its rounded output keeps)
    dh = ops.conv([grads[last]], pack, [f"w{last}.0"], layout, "leaky_grad", inputs[last], transpose=True)
    for i in reversed(range(units)):
        a, b = 2 * i + 1, 2 * i + 2
        grads[b] = ops.operand(dh)
        grads[a] = ops.conv([grads[b]], pack, [f"w{b}.0"], layout, "leaky_grad", inputs[b], transpose=True)
        dh = dh + ops.conv([grads[a]], pack, [f"w{a}.0"], layout, "none", transpose=True)
    grads[0] = ops.operand(dh)
    dx = ops.conv([grads[0]], pack, ["w0.0"], layout, "none", transpose=True)
    return dx, *layer_grads(ops, layout, pack, [[x] for x in inputs], grads)


enhanced_block_flat.defvjp(_enhanced_block_fwd, _enhanced_block_bwd)


def enhanced_block(
    x: jax.Array,
    kernels: Sequence[jax.Array],
    biases: Sequence[jax.Array],
    dtype,
    cuda: bool = False,
    pack: WeightPack | None = None,
    unit_kernel: bool = True,
) -> jax.Array:
    """IRRM's Enhanced Block (`subnets.EnhancedBlock`'s function) on (n, h, w, c_in), from its HWIO kernels and
    biases (conv_in, conv_a and conv_b of each unit, conv_out); returns (n, h, w, features) in dtype. With ``cuda``
    the kernels are `irrm_jax.cuda_kernels`' (NVIDIA GPUs, bfloat16 or float32). ``pack``: the kernels and biases
    packed once (`enhanced_block_pack`), read instead of packing them again: for inference (no gradients); there
    ``unit_kernel`` computes the last residual unit in one call where the kernels have one
    (`dense_kernels.Ops.residual_unit`). Under an abstract mesh with a 'data' axis, each device runs its part of the
    batch.

    Raises:
      ValueError: for a pack that does not fit.
    """
    units = (len(kernels) - 2) // 2
    return kernel_block(
        x,
        kernels,
        biases,
        dtype,
        cuda,
        pack,
        flat_weights=_flat_weights,
        flat_block=enhanced_block_flat,
        packed_forward=lambda layout, ops, x, pack: _forward(layout, ops, x, pack, units, unit_kernel)[0],
    )


def enhanced_block_pack(
    kernels: Sequence[jax.Array], biases: Sequence[jax.Array], dtype, cuda: bool = False
) -> WeightPack:
    """The weight pack `enhanced_block` makes of these kernels and biases at every call, made once for its ``pack``."""
    return block_pack(_flat_weights, kernels, biases, dtype, cuda)


def _flat_weights(kernels, biases, dtype, ops):
    """The HWIO kernels and biases as `enhanced_block_flat` takes them: channels padded as ``ops`` computes them."""
    c_in, width, features = kernels[0].shape[2], kernels[0].shape[-1], kernels[-1].shape[-1]
    c_x, c_w, c_out = (ops.channels(c, dtype) for c in (c_in, width, features))
    ins = [(c_in, c_x)] + [(width, c_w)] * (len(kernels) - 1)
    outs = [c_w] * (len(kernels) - 1) + [c_out]
    flat = tuple(flat_kernels(k, [c], [p], cout, dtype) for k, (c, p), cout in zip(kernels, ins, outs, strict=True))
    return flat, tuple(flat_bias(b, cout, dtype) for b, cout in zip(biases, outs, strict=True))
