"""IRN's DenseBlock as Pallas GPU kernels (the speed option ``dense_pallas``): same function, same parameters.

Layout. A batch (N, H, W, C) is stored *flat*: zero-padded by one pixel on every side, flattened to
N * (H+2) * (W+2) rows of C channels, with zero margin rows before and after. A 3x3 convolution is then nine
row-shifted matrix products (row offsets dy * (W+2) + dx), with no bounds checks. Every flat array is zero
outside the image pixels, and every kernel keeps it so by masking what it writes.

Kernels. `conv` is one 3x3 convolution of several flat inputs (a DenseBlock layer reads x, x1, ..., x_k
without concatenating them) with its epilogue fused (bias, LeakyReLU, or LeakyReLU's backward);
`weight_grad` gives the kernel and bias gradients. `dense_block` chains them and has its own backward
(`jax.custom_vjp`) built from the same two kernels: a feature map's gradient is the convolution of the later
layers' gradients with their kernels flipped and transposed.

Weights. A block call prepares its kernels and biases once (in the compute dtype, padded) into one flat array
(`WeightPack`) that the convolutions read at offsets, the kernels in HWIO order for the forward convolutions and
the transposed ones alike: XLA writes it in one fusion, where separate arrays, transposed and flipped for each
direction, took one small kernel each (about 450 a training step of IRN x4, 1.1 ms on an H100). Inference, whose
weights do not change, packs them once (`dense_block_pack`, `irrm_jax.models.with_weight_packs`) and passes the pack.
In inference with the CUDA kernels a DenseBlock's last two layers share one call's products over the inputs both
read (`joint_layers`, `Ops.last_two_layers`): the last layer then reads only the one before's output and those sums.

Channel counts must be powers of two of at least 16 (Triton's blocks and matrix units; the CUDA kernels take
multiples of 16, `Ops.channels`): the input and the last layer's output are padded with zeros; the growth (IRN: 32)
must already be a power of two. On GPUs the kernels compile with Triton; on other backends they run in Pallas'
interpreter (correct, slow: for tests). `irrm_jax.enhanced_kernels` runs IRRM's Enhanced Block on the same kernels.

Several devices: XLA cannot split a Pallas kernel over a sharded batch (it would gather the batch and run all of
it on every device), so under an abstract mesh with a ``'data'`` axis (`jax.sharding.use_abstract_mesh`, as the
training step sets) `dense_block` runs per device with `jax.shard_map`; the kernel gradients are summed over the
devices by shard_map's transpose.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt
from jax.sharding import PartitionSpec

from irrm_jax.parallel import DATA_AXIS

SLOPE = 0.2  # LeakyReLU's negative slope in IRN's DenseBlock
BIAS_EPILOGUES = ("bias", "bias_leaky", "bias_residual", "bias_residual_leaky")  # they add a bias from the pack
RESIDUAL_EPILOGUES = ("bias_residual", "bias_residual_leaky")  # they add a flat array, the residual
BLOCK_ROWS = 64  # rows (pixels) one kernel program computes
NUM_WARPS = 2  # Triton: warps per program
NUM_STAGES = 3  # Triton: software-pipelining depth of the loops over taps and blocks
# float32 kernel gradients unpipelined: three stages of every input's float32 tile take 80-104 KB of shared memory (two
# programs an SM); one block's forward + backward is 6-25% faster without them on an H100 (benchmarks/NOTES.md).
FLOAT32_WEIGHT_GRAD_STAGES = 1
WEIGHT_GRAD_PROGRAMS = 32  # kernel-gradient programs a tap, at least (fewer rows each where needed)
_ANY = pl.BlockSpec(memory_space=pl.ANY)
_CONTRACT_LAST = (((1,), (1,)), ((), ()))  # dot_general: a (m, k) times b (n, k) -> (m, n)


def accumulator_dtype(dtype) -> jnp.dtype:
    """float32 sums for float32 and bfloat16 inputs, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """Where the pixels of an (n, h, w) batch sit in a flat array, in blocks of `block` rows."""

    n: int
    h: int
    w: int
    block: int = BLOCK_ROWS

    @property
    def row_width(self) -> int:
        return self.w + 2

    @property
    def plane(self) -> int:
        return (self.h + 2) * (self.w + 2)

    @property
    def margin_blocks(self) -> int:
        """Zero blocks before and after the images: enough for the largest tap offset, w + 3 rows."""
        return -(-(self.w + 3) // self.block)

    @property
    def chunk_blocks(self) -> int:
        """Blocks one weight-gradient program sums (up to 16, fewer so that there are `WEIGHT_GRAD_PROGRAMS` a tap)."""
        return max(1, min(16, -(-self.n * self.plane // self.block) // WEIGHT_GRAD_PROGRAMS))

    @property
    def core_blocks(self) -> int:
        """Blocks holding the images (a whole number of chunks; rows past the last image are zero)."""
        blocks = -(-self.n * self.plane // self.block)
        return -(-blocks // self.chunk_blocks) * self.chunk_blocks

    @property
    def total_blocks(self) -> int:
        return self.core_blocks + 2 * self.margin_blocks

    @property
    def rows(self) -> int:
        return self.total_blocks * self.block

    @property
    def margin_rows(self) -> int:
        return self.margin_blocks * self.block

    def offset(self, tap):
        """Row offset of a 3x3 tap (int or traced) in HWIO order: tap 3a + b reads pixel (y + a - 1, x + b - 1)."""
        three = jnp.asarray(3, jnp.asarray(tap).dtype)  # same dtype as tap, also under jax_enable_x64
        return (jax.lax.div(tap, three) - 1) * self.row_width + (jax.lax.rem(tap, three) - 1)


def interior(layout: FlatLayout, rows: jax.Array) -> jax.Array:
    """True where flat row `rows` holds an image pixel (not padding, margin or tail)."""
    p = rows - layout.margin_rows
    plane, row_width = (jnp.asarray(v, p.dtype) for v in (layout.plane, layout.row_width))
    q = jax.lax.rem(p, plane)
    y = jax.lax.div(q, row_width)
    x = jax.lax.rem(q, row_width)
    inside = (p >= 0) & (p < layout.n * layout.plane)
    return inside & (y >= 1) & (y <= layout.h) & (x >= 1) & (x <= layout.w)


def to_flat(x: jax.Array, layout: FlatLayout, channels: int) -> jax.Array:
    """(n, h, w, c) -> flat (rows, channels), zero-padded."""
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, channels - c))).reshape(n * layout.plane, channels)
    return jnp.pad(x, ((layout.margin_rows, layout.rows - layout.margin_rows - n * layout.plane), (0, 0)))


def from_flat(x: jax.Array, layout: FlatLayout, channels: int) -> jax.Array:
    """flat (rows, C) -> (n, h, w, channels), the first `channels` channels."""
    pixels = x[layout.margin_rows : layout.margin_rows + layout.n * layout.plane, :channels]
    return pixels.reshape(layout.n, layout.h + 2, layout.w + 2, channels)[:, 1:-1, 1:-1]


def _pallas(kernel, name, out_shape, grid, n_operands, num_stages=NUM_STAGES):
    on_gpu = jax.default_backend() == "gpu"
    return pl.pallas_call(
        kernel,
        name=name,
        out_shape=out_shape,
        grid=grid,
        in_specs=[_ANY] * n_operands,
        out_specs=_ANY if isinstance(out_shape, jax.ShapeDtypeStruct) else [_ANY] * len(out_shape),
        interpret=not on_gpu,
        compiler_params=plt.CompilerParams(num_warps=NUM_WARPS, num_stages=num_stages) if on_gpu else None,
    )


def _conv_kernel(*refs, layout: FlatLayout, n_inputs: int, epilogue: str):
    inputs, weights = refs[:n_inputs], refs[n_inputs : 2 * n_inputs]
    extra, out_ref = refs[2 * n_inputs : -1], refs[-1]
    block, cout = layout.block, out_ref.shape[1]
    i = pl.program_id(0)
    start = i * block
    core = (i >= layout.margin_blocks) & (i < layout.margin_blocks + layout.core_blocks)

    @pl.when(core)
    def _compute():
        acc_dtype = accumulator_dtype(out_ref.dtype)
        acc = jnp.zeros((block, cout), acc_dtype)
        for x_ref, w_ref in zip(inputs, weights, strict=True):

            def add_tap(tap, acc, x_ref=x_ref, w_ref=w_ref):  # a loop, so that Triton pipelines the loads
                x = x_ref[pl.ds(start + layout.offset(tap), block), :]
                w = w_ref[pl.ds(tap * cout, cout), :]  # (cout, c): both operands contiguous along c
                return acc + jax.lax.dot_general(x, w, _CONTRACT_LAST, preferred_element_type=acc_dtype)

            acc = jax.lax.fori_loop(0, 9, add_tap, acc)
        if epilogue in BIAS_EPILOGUES:
            acc += extra[0][...].astype(acc_dtype)[None, :]
        if epilogue in RESIDUAL_EPILOGUES:
            acc += extra[1][pl.ds(start, block), :].astype(acc_dtype)
        if epilogue in ("bias_leaky", "bias_residual_leaky"):
            acc = jax.nn.leaky_relu(acc, SLOPE)
        if epilogue == "leaky_grad":  # extra[0] is the LeakyReLU's output: its sign is its input's
            acc = jnp.where(extra[0][pl.ds(start, block), :] >= 0, acc, SLOPE * acc)
        keep = interior(layout, start + jax.lax.broadcasted_iota(jnp.int32, (block,), 0))
        out_ref[pl.ds(start, block), :] = jnp.where(keep[:, None], acc, 0.0).astype(out_ref.dtype)

    @pl.when(jnp.logical_not(core))
    def _zero():
        out_ref[pl.ds(start, block), :] = jnp.zeros((block, cout), out_ref.dtype)


def check_options(epilogue: str, residual: jax.Array | None, with_operand: bool) -> None:
    """Raises ValueError unless a residual comes with the residual epilogues (and only with them), and
    ``with_operand`` with "bias"."""
    if (residual is not None) != (epilogue in RESIDUAL_EPILOGUES):
        raise ValueError(f"a residual goes with the epilogues {RESIDUAL_EPILOGUES} only, got epilogue {epilogue!r}")
    if with_operand and epilogue != "bias":
        raise ValueError(f"with_operand goes with the 'bias' epilogue, got {epilogue!r}")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["buffer"], meta_fields=["slots"])
@dataclasses.dataclass(frozen=True)
class WeightPack:
    """Named arrays of one dtype in one flat array, one after another (each raveled).

    Attributes:
      buffer: the flat array.
      slots: (name, offset, shape) of each array, in order.
    """

    buffer: jax.Array
    slots: tuple[tuple[str, int, tuple[int, ...]], ...]

    @classmethod
    def of(cls, arrays: dict[str, jax.Array]) -> "WeightPack":
        """The arrays packed in the order given.

        Raises:
          ValueError: for arrays of different dtypes (the buffer holds them as they are, unconverted).
        """
        dtypes = {name: a.dtype for name, a in arrays.items()}
        if len(set(dtypes.values())) > 1:
            raise ValueError(f"a WeightPack holds arrays of one dtype, got {dtypes}")
        slots, offset = [], 0
        for name, a in arrays.items():
            slots.append((name, offset, tuple(a.shape)))
            offset += a.size
        return cls(jnp.concatenate([jnp.ravel(a) for a in arrays.values()]), tuple(slots))

    def slot(self, name: str) -> tuple[int, tuple[int, ...]]:
        """(offset, shape) of array `name`."""
        for key, offset, shape in self.slots:
            if key == name:
                return offset, shape
        raise KeyError(f"no array {name!r} in the pack (it holds {[key for key, _, _ in self.slots]})")

    def __contains__(self, name: str) -> bool:
        return any(key == name for key, _, _ in self.slots)

    def __getitem__(self, name: str) -> jax.Array:
        """Array `name`, as a copy of its part of the buffer."""
        offset, shape = self.slot(name)
        return jax.lax.slice(self.buffer, (offset,), (offset + math.prod(shape),)).reshape(shape)


def conv(
    inputs: Sequence[jax.Array],
    pack: WeightPack,
    kernels: Sequence[str],
    layout: FlatLayout,
    epilogue: str,
    extra: str | jax.Array | None = None,
    transpose: bool = False,
    residual: jax.Array | None = None,
    with_operand: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """sum_i conv3x3(inputs[i], kernels[i]) then the epilogue, flat in and out; with ``transpose`` the transposed
    convolutions (the gradients of conv3x3 with respect to its input). ``with_operand``: also the output as the
    kernels take it as an input (the same array here; `irrm_jax.cuda_kernels.conv` writes a TF32 copy).

    Args:
      inputs: flat arrays (rows, c_i), zero outside the pixels.
      pack: holds the kernels and the bias.
      kernels: names in ``pack`` of HWIO kernels (9, c_i, cout), one an input (taps in `FlatLayout.offset`'s order);
        with ``transpose``, of kernels (9, cout, c_i) whose transposed convolution is computed (taps reversed, the
        channel axes swapped): a DenseBlock's input gradients from its forward kernels.
      epilogue: "bias" (+ the (cout,) bias named `extra` in ``pack``), "bias_leaky" (then LeakyReLU),
        "bias_residual" (the bias, then + the flat array ``residual``), "bias_residual_leaky" (then LeakyReLU),
        "leaky_grad" (multiply by LeakyReLU's slope where the flat array `extra`, the activation's output, is
        negative) or "none".

    Raises:
      ValueError: for options that do not go with the epilogue (`check_options`).
    """
    check_options(epilogue, residual, with_operand)
    # the Pallas kernel's layout: per tap a (cout, c_i) matrix, both operands contiguous along the summed channels
    matrices = [pack[k][::-1] if transpose else jnp.swapaxes(pack[k], 1, 2) for k in kernels]
    cout = matrices[0].shape[1]
    operands = [*inputs, *(m.reshape(9 * cout, -1) for m in matrices)]
    operands += [pack[extra]] if epilogue in BIAS_EPILOGUES else [] if extra is None else [extra]
    operands += [] if residual is None else [residual]
    kernel = functools.partial(_conv_kernel, layout=layout, n_inputs=len(inputs), epilogue=epilogue)
    out_shape = jax.ShapeDtypeStruct((layout.rows, cout), inputs[0].dtype)
    name = f"dense_conv_{epilogue}_{layout.h}x{layout.w}"  # names the Triton kernel in profiles
    out = _pallas(kernel, name, out_shape, (layout.total_blocks,), len(operands))(*operands)
    return (out, out) if with_operand else out


def _weight_grad_kernel(*refs, layout: FlatLayout, n_inputs: int):
    inputs, grad_ref, out_ref = refs[:n_inputs], refs[n_inputs], refs[n_inputs + 1]
    block = layout.block
    tap, chunk = pl.program_id(0), pl.program_id(1)
    offset = layout.offset(tap)
    first = (layout.margin_blocks + chunk * layout.chunk_blocks) * block
    cout, acc_dtype = grad_ref.shape[1], accumulator_dtype(grad_ref.dtype)
    channels = [x_ref.shape[1] for x_ref in inputs]

    def add_block(b, sums):
        start = first + b * block
        g = grad_ref[pl.ds(start, block), :]
        products = (
            jax.lax.dot_general(
                x_ref[pl.ds(start + offset, block), :], g, (((0,), (0,)), ((), ())), preferred_element_type=acc_dtype
            )
            for x_ref in inputs
        )
        return tuple(s + p for s, p in zip(sums, products, strict=True))

    zeros = tuple(jnp.zeros((c, cout), acc_dtype) for c in channels)
    sums = jax.lax.fori_loop(0, layout.chunk_blocks, add_block, zeros)
    row = (chunk * 9 + tap) * (sum(channels) + 1)
    for c, s in zip(channels, sums, strict=True):
        out_ref[pl.ds(row, c), :] = s
        row += c

    @pl.when(tap == 4)  # the bias gradient's part, once: in the centre tap's programs, summed across rows at the end
    def _bias():
        def add_rows(b, rows):
            return rows + grad_ref[pl.ds(first + b * block, block), :].astype(acc_dtype)

        rows = jax.lax.fori_loop(0, layout.chunk_blocks, add_rows, jnp.zeros((block, cout), acc_dtype))
        out_ref[pl.ds(row, 1), :] = jnp.sum(rows, axis=0)[None, :]

    @pl.when(tap != 4)
    def _no_bias():
        out_ref[pl.ds(row, 1), :] = jnp.zeros((1, cout), acc_dtype)


def weight_grad(
    inputs: Sequence[jax.Array], grad: jax.Array, layout: FlatLayout
) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """Gradients of conv(inputs, kernels) + bias, given the flat output gradient: the kernels' (9, c_i, cout) each and
    the bias' (cout,), in `accumulator_dtype`.

    Each program sums its tap's products over a chunk of rows into one partial array for all inputs (the bias
    gradient as one more row); XLA then adds the chunks' partials in one reduction a layer.
    """
    chunks = layout.core_blocks // layout.chunk_blocks
    channels, cout = [x.shape[1] for x in inputs], grad.shape[1]
    total = sum(channels) + 1
    out_shape = jax.ShapeDtypeStruct((chunks * 9 * total, cout), accumulator_dtype(grad.dtype))
    kernel = functools.partial(_weight_grad_kernel, layout=layout, n_inputs=len(inputs))
    name = f"dense_weight_grad_{layout.h}x{layout.w}"
    stages = FLOAT32_WEIGHT_GRAD_STAGES if grad.dtype == jnp.float32 else NUM_STAGES
    partials = _pallas(kernel, name, out_shape, (9, chunks), len(inputs) + 1, stages)(*inputs, grad)
    return split_weight_grads(partials.reshape(chunks, 9, total, cout), [channels])[0]


def split_weight_grads(
    partials: jax.Array, layers: Sequence[Sequence[int]]
) -> list[tuple[tuple[jax.Array, ...], jax.Array]]:
    """Each layer's kernel and bias gradients (as `weight_grad`'s) from partial sums (groups, 9, rows, cout) of
    several layers, ``layers`` giving each one's input channels: per tap every layer's kernel rows, one input after
    another, then one bias row a layer (nonzero at the centre tap only)."""
    summed = partials.sum(0)
    bias_row, start, grads = sum(map(sum, layers)), 0, []
    for layer, channels in enumerate(layers):
        kernels = []
        for c in channels:
            kernels.append(summed[:, start : start + c])
            start += c
        grads.append((tuple(kernels), summed[4, bias_row + layer]))
    return grads


def weight_grads(layers: Sequence[tuple[Sequence[jax.Array], jax.Array]], layout: FlatLayout) -> list:
    """`weight_grad` of several layers, given as (inputs, output gradient) pairs: one result a layer."""
    return [weight_grad(inputs, grad, layout) for inputs, grad in layers]


def _unchanged(a: jax.Array) -> jax.Array:
    return a


def padded_channels(c: int, dtype=None) -> int:
    """The channel count the Pallas kernels compute c channels with, in any dtype: the next power of two, at least 16
    (Triton's blocks)."""
    return max(16, pl.next_power_of_2(c))


class Ops(NamedTuple):
    """The two kernels a DenseBlock is computed with, forward and backward: `conv` and `weight_grads` here (Pallas),
    or the CUDA ones of `irrm_jax.cuda_kernels` (same arguments and results); ``operand`` prepares the block's input,
    kernels and output gradient for them, once a block (the CUDA kernels take float32 operands as TF32 values);
    ``channels(c, dtype)`` is the channel count they compute c channels with; ``kmajor_copies`` whether the
    forward convolutions read the kernels as K-major copies (9, cout, c) packed beside them (`pack_weights`).
    Pallas reads each kernel from a copy of its part of the pack; CUDA reads the pack. ``residual_unit``: IRRM's
    residual unit in one call, for inference (`irrm_jax.cuda_kernels.residual_unit`: it returns None where it does
    not apply); None: two `conv` calls always. ``last_two_layers``: in inference, a DenseBlock's last two layers with
    their shared inputs' products in one call (`irrm_jax.cuda_kernels.last_two_layers`; None where the kernels do not
    compute), where their outputs together are ``joint_width`` or fewer (`pack_weights` then packs their joint
    kernels)."""

    conv: Callable
    weight_grads: Callable
    operand: Callable = _unchanged
    channels: Callable = padded_channels
    kmajor_copies: bool = False
    residual_unit: Callable | None = None
    last_two_layers: Callable | None = None
    joint_width: int = 0


PALLAS = Ops(conv, weight_grads)


def joint_kernel(k: int, i: int) -> str:
    """The name in a weight pack of layers k and k + 1's K-major kernels of input i, side by side (`pack_weights`)."""
    return f"w{k}+{k + 1}.{i}.t"


def joint_layers(ops: Ops, kernels: tuple) -> int | None:
    """k where a block's last two layers k and k + 1 have their shared inputs' products in one call
    (`Ops.last_two_layers`): the last layer reads the inputs of the one before and its output (a DenseBlock's), and
    their outputs together are ``ops.joint_width`` or fewer. None elsewhere."""
    if len(kernels) < 2 or not ops.kmajor_copies or not ops.joint_width:
        return None
    before, last = kernels[-2:]
    shared = [k.shape[1] for k in before] == [k.shape[1] for k in last[:-1]] and len(last) == len(before) + 1
    return len(kernels) - 2 if shared and before[0].shape[2] + last[0].shape[2] <= ops.joint_width else None


def pack_weights(ops: Ops, kernels: tuple, biases: tuple, joint_last: bool = False) -> WeightPack:
    """A block's kernels (one tuple of per-input kernels a layer) and biases as its convolutions read them: layer k's
    HWIO kernel for input i as ``w{k}.{i}`` (9, c_i, cout), for the forward convolutions and (transposed) the input
    gradients, its bias as ``b{k}``; where ``ops.kmajor_copies``, also the kernel's K-major copy
    ``w{k}.{i}.t`` (9, cout, c_i) for the forward convolutions. ``joint_last`` (inference): for the inputs that the
    last two layers share, where they run together (`joint_layers`), their copies side by side instead,
    `joint_kernel` (9, cout_k + cout_k+1, c_i). The training step's forward keeps a call a layer: the joint calls'
    effect on it is not measured against its base yet (benchmarks/NOTES.md)."""
    joint = joint_layers(ops, kernels) if joint_last else None
    arrays = {}
    for k, (layer_kernels, bias) in enumerate(zip(kernels, biases, strict=True)):
        for i, kernel in enumerate(layer_kernels):
            arrays[f"w{k}.{i}"] = ops.operand(kernel)
            if ops.kmajor_copies and (joint is None or k < joint or i > joint):
                arrays[f"w{k}.{i}.t"] = jnp.swapaxes(arrays[f"w{k}.{i}"], 1, 2)
        arrays[f"b{k}"] = bias
    for i in range(0 if joint is None else joint + 1):
        copies = [jnp.swapaxes(arrays[f"w{k}.{i}"], 1, 2) for k in (joint, joint + 1)]
        arrays[joint_kernel(joint, i)] = jnp.concatenate(copies, axis=1)
    return WeightPack.of(arrays)


def layer_grads(ops: Ops, layout: FlatLayout, pack: WeightPack, inputs: Sequence, grads: Sequence) -> tuple:
    """The kernel gradients (a tuple of per-input ones a layer, in the pack's dtype) and the bias gradients of
    layers that read ``inputs[k]`` (flat arrays) and whose outputs have the gradients ``grads[k]``."""
    results = ops.weight_grads(list(zip(inputs, grads, strict=True)), layout)
    kernel_grads = tuple(tuple(k.astype(pack.buffer.dtype) for k in kernels) for kernels, _ in results)
    bias_grads = tuple(bias.astype(grad.dtype) for (_, bias), grad in zip(results, grads, strict=True))
    return kernel_grads, bias_grads


def _forward(layout, ops, x, pack, layers):
    """The block's feature maps [x, x1, ..., its output], as the kernels take them (the last as it is); its last two
    layers in one `Ops.last_two_layers` where the pack holds their joint kernels and ``ops`` computes them."""
    feats = [ops.operand(x)]
    for k in range(layers):
        if joint_kernel(k, 0) in pack and (last_two := ops.last_two_layers(feats, pack, layout, k)) is not None:
            return feats + last_two
        epilogue = "bias" if k == layers - 1 else "bias_leaky"
        feats.append(ops.conv(feats, pack, [f"w{k}.{i}" for i in range(k + 1)], layout, epilogue, f"b{k}"))
    return feats


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def dense_block_flat(layout: FlatLayout, ops: Ops, x: jax.Array, kernels: tuple, biases: tuple) -> jax.Array:
    """The DenseBlock on a flat input: layer k (0-based) convolves [x, x1, ..., xk] with kernels[k] (one
    (9, c, cout) per input) and adds biases[k]; layers before the last apply LeakyReLU(0.2). Forward and backward
    are computed by ``ops`` (`PALLAS` or `irrm_jax.cuda_kernels.CUDA`); without gradients (inference) its last two
    layers may share a call (`joint_layers`). The output's gradient must be zero outside the pixels, like every flat
    array (`dense_block`'s is)."""
    return _forward(layout, ops, x, pack_weights(ops, kernels, biases, joint_last=True), len(kernels))[-1]


def _dense_block_fwd(layout, ops, x, kernels, biases):
    pack = pack_weights(ops, kernels, biases)
    feats = _forward(layout, ops, x, pack, len(kernels))
    return feats[-1], (feats[:-1], pack)


def _dense_block_bwd(layout, ops, residuals, g):
    feats, pack = residuals  # every array here is in the block's compute dtype, the biases too
    layers = len(feats)
    dz = [None] * layers  # gradients of each layer's pre-activation
    dz[-1] = ops.operand(g)  # zero outside the pixels (dense_block_flat's docstring)
    for j in range(layers - 1, 0, -1):  # feats[j] is layer j-1's output, read by layers j..end
        later = range(j, layers)
        dz[j - 1] = ops.conv(
            [dz[k] for k in later], pack, [f"w{k}.{j}" for k in later], layout, "leaky_grad", feats[j], transpose=True
        )
    dx = ops.conv(dz, pack, [f"w{k}.0" for k in range(layers)], layout, "none", transpose=True)
    return dx, *layer_grads(ops, layout, pack, [feats[: k + 1] for k in range(layers)], dz)


dense_block_flat.defvjp(_dense_block_fwd, _dense_block_bwd)


def kernel_ops(cuda: bool) -> Ops:
    """The kernels a block runs on: `irrm_jax.cuda_kernels.CUDA` or `PALLAS`."""
    if cuda:
        from irrm_jax import cuda_kernels  # imports this module

        return cuda_kernels.CUDA
    return PALLAS


def flat_kernels(kernel: jax.Array, inputs: Sequence[int], padded: Sequence[int], cout: int, dtype) -> tuple:
    """An HWIO kernel (3, 3, sum(inputs), c) as the flat kernels read it: one (9, padded[i], cout) part an input,
    zero-padded, in dtype."""
    kernel = kernel.reshape(9, -1, kernel.shape[-1])
    kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, cout - kernel.shape[-1])))
    starts = [sum(inputs[:i]) for i in range(len(inputs))]
    return tuple(
        jnp.pad(kernel[:, a : a + c], ((0, 0), (0, p - c), (0, 0))).astype(dtype)
        for a, c, p in zip(starts, inputs, padded, strict=True)
    )


def flat_bias(bias: jax.Array, cout: int, dtype) -> jax.Array:
    """A bias zero-padded to cout channels, in dtype."""
    return jnp.pad(bias, (0, cout - bias.shape[0])).astype(dtype)


def per_device(block: Callable, x: jax.Array, *weights) -> jax.Array:
    """``block(x, *weights)``; under an abstract mesh with a 'data' axis, on each device's part of the batch
    (`jax.shard_map`: XLA cannot split a kernel call over a sharded batch), the weights on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if DATA_AXIS in mesh.axis_names and mesh.shape[DATA_AXIS] > 1:
        data, same = PartitionSpec(DATA_AXIS), PartitionSpec()
        # check_vma=False: pallas_call's outputs carry no per-device variance
        run = jax.shard_map(block, in_specs=(data,) + (same,) * len(weights), out_specs=data, check_vma=False)
        return run(x, *weights)
    return block(x, *weights)


def checked_pack(pack: WeightPack, build: Callable, kernels: Sequence, biases: Sequence) -> WeightPack:
    """A prepared weight pack, once it holds what ``build(kernels, biases)`` packs: the same arrays, shapes and dtype.

    Raises:
      ValueError: for a pack prepared for another block, dtype or kernel option.
    """
    expected = jax.eval_shape(build, kernels, biases)
    ours = (pack.slots, pack.buffer.shape, pack.buffer.dtype)
    if ours != (expected.slots, expected.buffer.shape, expected.buffer.dtype):
        raise ValueError(
            "the prepared weight pack does not fit this block (prepared for other weights, another compute dtype "
            f"or kernel option): {len(pack.slots)} arrays of {pack.buffer.dtype}, {pack.buffer.shape[0]} values, "
            f"expected {len(expected.slots)} of {expected.buffer.dtype}, {expected.buffer.shape[0]}."
        )
    return pack


def block_pack(flat_weights: Callable, kernels: Sequence, biases: Sequence, dtype, cuda: bool = False) -> WeightPack:
    """A kernel block's weight pack: its kernels and biases as ``flat_weights(kernels, biases, dtype, ops)`` lays
    them out for its flat function, packed as the kernels read them for inference (`pack_weights`)."""
    ops = kernel_ops(cuda)
    return pack_weights(ops, *flat_weights(kernels, biases, dtype, ops), joint_last=True)


def kernel_block(x, kernels, biases, dtype, cuda, pack, *, flat_weights, flat_block, packed_forward) -> jax.Array:
    """x (n, h, w, c_in) through a kernel block, returned as (n, h, w, features): on the flat layout,
    ``flat_block(layout, ops, x_flat, flat_kernels, flat_biases)`` (the block's differentiable function, which packs
    its weights), or ``packed_forward(layout, ops, x_flat, pack)`` from a ``pack`` made once (`block_pack` with
    ``flat_weights``). Under an abstract mesh with a 'data' axis, on each device's part of the batch.

    Raises:
      ValueError: for a pack that does not fit (`checked_pack`).
    """
    if pack is not None:
        build = functools.partial(block_pack, flat_weights, dtype=dtype, cuda=cuda)
        pack = checked_pack(pack, build, kernels, biases)

    def on_device(x, kernels, biases, pack=None):
        n, h, w, c_in = x.shape
        layout = FlatLayout(n, h, w, BLOCK_ROWS)
        ops = kernel_ops(cuda)
        x_flat = to_flat(x.astype(dtype), layout, ops.channels(c_in, dtype))
        if pack is None:
            out = flat_block(layout, ops, x_flat, *flat_weights(kernels, biases, dtype, ops))
        else:
            out = packed_forward(layout, ops, x_flat, pack)
        return from_flat(out, layout, kernels[-1].shape[-1])

    return per_device(on_device, x, kernels, biases, *([] if pack is None else [pack]))


def dense_block(
    x: jax.Array,
    kernels: Sequence[jax.Array],
    biases: Sequence[jax.Array],
    dtype,
    cuda: bool = False,
    pack: WeightPack | None = None,
) -> jax.Array:
    """IRN's DenseBlock (`subnets.DenseBlock`'s function) on (n, h, w, c_in), from its HWIO kernels and biases.

    Layer k sees [x, x1, ..., xk] concatenated in that order; returns (n, h, w, features) in dtype. With ``cuda``
    the convolutions and kernel gradients come from `irrm_jax.cuda_kernels` (NVIDIA GPUs, bfloat16 or float32).
    ``pack``: the kernels and biases packed once (`dense_block_pack`), read instead of packing them again: for
    inference (no gradients). Under an abstract mesh with a 'data' axis, each device runs its part of the batch.

    Raises:
      ValueError: for a growth that is not a power of two >= 16, or a pack that does not fit.
    """
    growth = kernels[0].shape[-1]
    if growth != padded_channels(growth):
        raise ValueError(f"dense_pallas needs a growth that is a power of two >= 16, got {growth}.")
    layers = len(kernels)
    return kernel_block(
        x,
        kernels,
        biases,
        dtype,
        cuda,
        pack,
        flat_weights=_flat_weights,
        flat_block=dense_block_flat,
        packed_forward=lambda layout, ops, x, pack: _forward(layout, ops, x, pack, layers)[-1],
    )


def dense_block_pack(
    kernels: Sequence[jax.Array], biases: Sequence[jax.Array], dtype, cuda: bool = False
) -> WeightPack:
    """The weight pack `dense_block` makes of these kernels and biases at every call, made once for its ``pack``."""
    return block_pack(_flat_weights, kernels, biases, dtype, cuda)


def _flat_weights(kernels, biases, dtype, ops):
    """The HWIO kernels and biases as `dense_block_flat` takes them: channels padded as ``ops`` computes them."""
    c_in, growth, features = kernels[0].shape[2], kernels[0].shape[-1], kernels[-1].shape[-1]
    c_x, c_out = ops.channels(c_in, dtype), ops.channels(features, dtype)
    last = len(kernels) - 1
    flat = tuple(
        flat_kernels(kernel, [c_in] + [growth] * k, [c_x] + [growth] * k, c_out if k == last else growth, dtype)
        for k, kernel in enumerate(kernels)
    )
    return flat, tuple(flat_bias(b, c_out if k == last else growth, dtype) for k, b in enumerate(biases))
