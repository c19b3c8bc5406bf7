"""The DenseBlock's kernels in CUDA (the speed option ``dense_cuda``), called through XLA's FFI.

`conv` and `weight_grads` are `dense_kernels.conv` and `dense_kernels.weight_grads` (same flat arrays and results up
to rounding) computed by ``dense_conv.cu`` and ``dense_weight_grad.cu``: a block stages one input tile and its
one-pixel halo in shared memory and feeds all nine taps from it, where the Pallas kernels load every tap's rows
from L2 again (nine times the reads, which bound them: benchmarks/NOTES.md). `CUDA` is the pair for
`dense_kernels.dense_block_flat`.

The kernels are compiled on first use with ``nvcc`` (CUDA 12 or newer: on ``PATH``, in ``$CUDA_HOME/bin`` or in
``/usr/local/cuda/bin``) against the installed jaxlib's FFI headers into one library in ``$IRRM_JAX_CACHE`` (default
``~/.cache/irrm_jax``), one per source and jax version. bfloat16 and float32 (TF32 products, like cuDNN's default)
on NVIDIA GPUs of compute capability 9.0 (H100, H200); elsewhere use ``dense_pallas`` alone. Under
``jax.default_matmul_precision("highest")`` (or "float32") float32 work goes to the Pallas kernels, which compute
full float32 products (as `irrm_jax.verify`'s float32 check asks).

TF32 operands. The tensor cores read a float32 operand's top 19 bits (truncation), so the kernels take float32
operands that are TF32 values already: `tf32_operand` rounds the DenseBlock's input, kernels and output gradient
once a block (fused by XLA into the copies that make them), and the epilogues that write the feature maps and
their gradients (``bias_leaky``, ``leaky_grad``: read by these kernels only) round what they store. The results are
those of rounding every operand where it is used, without rounding each element again at every tap.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from irrm_jax import dense_kernels
from irrm_jax.dense_kernels import FlatLayout, WeightPack

SOURCES = [Path(__file__).with_name(name) for name in ("dense_conv.cu", "dense_weight_grad.cu")]
HEADERS = [Path(__file__).with_name("dense_cuda.cuh")]
TARGETS = {  # FFI name: symbol
    "irrm_dense_conv": "IrrmDenseConv",
    "irrm_residual_unit": "IrrmResidualUnit",
    "irrm_dense_weight_grad": "IrrmDenseWeightGrad",
}
EPILOGUES = {  # dense_conv.cu's
    "none": 0,
    "bias": 1,
    "bias_leaky": 2,
    "leaky_grad": 3,
    "bias_residual_leaky": 4,
    "bias_residual": 5,
    "bias_leaky_and_sums": 6,  # `last_two_layers`' first call
}
JOINT_WIDTH = 48  # the most outputs of one product (dense_conv.cu's N): a DenseBlock's last two layers' together
# Kernel-gradient blocks a call, about: groups of rows = this / the inputs' 16-channel chunks (fewer where there are
# fewer tiles). 256 summed the training step's layers faster than 128 or 512 on an H100, a call a layer and again with
# a call for a block's layers (benchmarks/NOTES.md).
WEIGHT_GRAD_BLOCKS = 256
MAX_INPUTS, MAX_CHANNELS = 16, 1024  # of one kernel-gradient call, all its layers' (dense_weight_grad.cu's limits)
# Under jax.vmap (`coupling.AffineCoupling`'s fuse_gh: G and H as one network) each kernel runs once for all members:
# batched operands keep their leading axis, unbatched ones get an axis of length 1 that the kernels read as shared.
VMAP_METHOD = "expand_dims"
GPU_ARCH = "sm_90a"  # wgmma (Hopper warpgroup products) needs the arch-specific target
DEFAULT_NVCC = "/usr/local/cuda/bin/nvcc"
FULL_FLOAT32 = ("highest", "float32")  # matmul precisions that the kernel's TF32 products would not honour


def find_nvcc() -> str:
    """The nvcc to build with; RuntimeError if there is none."""
    candidates = [shutil.which("nvcc")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append(DEFAULT_NVCC)
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RuntimeError(
        "dense_cuda compiles its CUDA kernel with nvcc, which was not found (not on PATH, in $CUDA_HOME/bin or in "
        "/usr/local/cuda/bin): install the CUDA toolkit or set CUDA_HOME, or turn dense_cuda off (dense_pallas "
        "alone runs the same function)."
    )


def library_path() -> Path:
    """Where the built library lives: named by a hash of the sources, the jax version and the GPU target."""
    sources = b"".join(path.read_bytes() for path in [*SOURCES, *HEADERS])
    key = hashlib.sha256(sources + f"{jax.__version__} {GPU_ARCH}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("IRRM_JAX_CACHE", Path.home() / ".cache" / "irrm_jax"))
    return cache / f"dense_cuda_{key}.so"


def build_library() -> Path:
    """Compiles the CUDA sources into `library_path()` unless it is there (atomically: concurrent builds are safe)."""
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        find_nvcc(),
        "-O3",
        "-std=c++17",
        f"-gencode=arch=compute_{GPU_ARCH[3:]},code={GPU_ARCH}",
        "-shared",
        "-Xcompiler",
        "-fPIC",
        "-diag-suppress",
        "940,2473",  # warnings in XLA's FFI headers
        f"-I{jax.ffi.include_dir()}",
        *map(str, SOURCES),
    ]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        result = subprocess.run([*command, "-o", str(built)], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"building {path.name} failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
        os.replace(built, path)
    return path


@functools.cache
def register() -> None:
    """Builds (once) and loads the library, and registers its FFI handlers with XLA for CUDA."""
    library = ctypes.cdll.LoadLibrary(str(build_library()))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="CUDA")


def _full_float32(dtype) -> bool:
    """Whether float32 products at full precision are asked for (which the kernels' TF32 products would not give)."""
    return dtype == jnp.float32 and jax.config.jax_default_matmul_precision in FULL_FLOAT32


def computes(dtype) -> bool:
    """Whether the CUDA kernels compute for this dtype (False: full float32 asked for, use Pallas); raises where
    they cannot."""
    if jax.default_backend() != "gpu":
        raise ValueError(f"dense_cuda runs on NVIDIA GPUs only (jax backend: {jax.default_backend()}).")
    if dtype not in (jnp.bfloat16, jnp.float32):
        raise ValueError(f"dense_cuda computes in bfloat16 or float32, not {dtype}.")
    if _full_float32(dtype):
        return False
    register()
    return True


def round_to_tf32(a: jax.Array) -> jax.Array:
    """float32 values rounded to TF32's 10 mantissa bits: to nearest, ties away from zero (the GPU's
    ``cvt.rna.tf32.f32``); infinities and NaNs unchanged."""
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    rounded = jax.lax.bitcast_convert_type((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), jnp.float32)
    return jnp.where(jnp.isfinite(a), rounded, a)


def tf32_operand(a: jax.Array) -> jax.Array:
    """An operand as the kernels take it: float32 rounded to TF32 unless full float32 is asked for (then the Pallas
    kernels compute, from the values as they are); bfloat16 unchanged."""
    return round_to_tf32(a) if a.dtype == jnp.float32 and not _full_float32(a.dtype) else a


def _layout_attributes(layout: FlatLayout) -> dict:
    return dict(n=np.int64(layout.n), h=np.int64(layout.h), w=np.int64(layout.w), margin=np.int64(layout.margin_rows))


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
    """`dense_kernels.conv`, computed by the CUDA kernel (see there for the arguments), which reads the kernels and
    the bias from the pack's buffer at their offsets. float32 inputs and kernels must be TF32 values
    (`tf32_operand`); the ``bias_leaky``, ``bias_residual_leaky`` and ``leaky_grad`` epilogues store TF32 values. A
    convolution reads each kernel's K-major copy ``name.t`` (9, cout, c) from the pack (`dense_kernels.pack_weights`
    packs them for `CUDA`), a transposed convolution the kernels themselves. ``with_operand`` (the "bias" epilogue):
    also the output as the kernels take it, its TF32-rounded copy in float32, written by the same kernel.

    Raises:
      ValueError: not on a GPU backend, a dtype other than bfloat16 and float32, or options that do not go with the
        epilogue (`dense_kernels.check_options`).
      RuntimeError: the kernels could not be built (no nvcc, or a compile error).
    """
    if not computes(inputs[0].dtype):
        out = dense_kernels.conv(inputs, pack, kernels, layout, epilogue, extra, transpose, residual)
        return (out, tf32_operand(out)) if with_operand else out
    dense_kernels.check_options(epilogue, residual, with_operand)
    copy = with_operand and inputs[0].dtype == jnp.float32  # bfloat16 outputs are their own operands
    cout = pack.slot(kernels[0])[1][1 if transpose else 2]
    out_type = jax.ShapeDtypeStruct((layout.rows, cout), inputs[0].dtype)
    out = _dense_conv(
        [out_type] * 2 if copy else out_type,
        inputs,
        pack,
        kernels if transpose else [f"{k}.t" for k in kernels],  # (9, cout, c) either way
        layout,
        epilogue,
        extra if epilogue in dense_kernels.BIAS_EPILOGUES else None,
        [extra] if epilogue == "leaky_grad" else [] if residual is None else [residual],
        transpose,
    )
    if copy:
        return tuple(out)
    return (out, out) if with_operand else out


def _dense_conv(out_types, inputs, pack, kmajor, layout, epilogue, bias, flat, transpose=False):
    """One call of the convolution kernel: its result types (one, or two: the TF32 copy or the sums), the inputs, the
    names of their K-major kernels (9, cout, c) in the pack and of the bias (or None), the epilogue's flat operands."""
    call = jax.ffi.ffi_call("irrm_dense_conv", out_types, vmap_method=VMAP_METHOD)
    return call(
        *inputs,
        pack.buffer,
        *flat,
        **_layout_attributes(layout),
        n_inputs=np.int64(len(inputs)),
        epilogue=np.int64(EPILOGUES[epilogue]),
        kernel_offsets=np.array([pack.slot(k)[0] for k in kmajor], np.int64),
        bias_offset=np.int64(-1 if bias is None else pack.slot(bias)[0]),
        transpose=bool(transpose),
    )


def last_two_layers(feats: list, pack: WeightPack, layout: FlatLayout, k: int) -> list[jax.Array] | None:
    """A DenseBlock's last two layers, k and k + 1, in two calls (`dense_kernels.Ops.last_two_layers`): the first
    computes layer k's outputs from ``feats`` (bias, LeakyReLU: the block's feature map x_{k+1}) and, as more outputs
    of the same products, layer k + 1's sums over those inputs (``bias_leaky_and_sums``, from the pack's joint
    kernels, `dense_kernels.joint_kernel`); the second, layer k + 1, reads x_{k+1} alone and adds its bias and those
    sums (``bias_residual``). Layer k + 1 thus reads none of its inputs twice. Returns [x_{k+1}, the block's output],
    or None where the kernels do not compute (full float32). The sums are stored in the compute dtype: in bfloat16
    layer k + 1's output is rounded once more than from one call's sums."""
    if not computes(feats[0].dtype):
        return None
    joint = [dense_kernels.joint_kernel(k, i) for i in range(len(feats))]
    split, width = pack.slot(f"b{k}")[1][0], pack.slot(joint[0])[1][1]
    types = [jax.ShapeDtypeStruct((layout.rows, c), feats[0].dtype) for c in (split, width - split)]
    x_next, sums = _dense_conv(types, feats, pack, joint, layout, "bias_leaky_and_sums", f"b{k}", [])
    return [x_next, conv([x_next], pack, [f"w{k + 1}.{k + 1}"], layout, "bias_residual", f"b{k + 1}", residual=sums)]


UNIT_WIDTHS = (32, 48)  # the residual unit's kernel: channels (dense_conv.cu's), rows of UNIT_MIN_WIDTH pixels or more
UNIT_MIN_WIDTH = 95


def residual_unit(h: jax.Array, pack: WeightPack, layers: tuple[int, int], layout: FlatLayout) -> jax.Array | None:
    """IRRM's residual unit, LeakyReLU(h + conv_b(LeakyReLU(conv_a(h)))) with the biases of layers ``layers`` = (a,
    b) of the pack, on flat arrays, as one kernel that keeps conv_a's output in shared memory (``dense_conv.cu``):
    the same values as the two `conv` calls on h's operand (`tf32_operand`), bit for bit. h is the residual stream as
    it is (float32 values are rounded on chip where conv_a reads them). None where the kernel does not apply: rows
    narrower than `UNIT_MIN_WIDTH` pixels, h without 32 or 48 channels, or full float32 asked for.
    """
    if not computes(h.dtype) or h.shape[-1] not in UNIT_WIDTHS or layout.w < UNIT_MIN_WIDTH:
        return None
    call = jax.ffi.ffi_call("irrm_residual_unit", jax.ShapeDtypeStruct(h.shape, h.dtype), vmap_method=VMAP_METHOD)
    return call(
        h,
        pack.buffer,
        **_layout_attributes(layout),
        kernel_offsets=np.array([pack.slot(f"w{k}.0.t")[0] for k in layers], np.int64),
        bias_offsets=np.array([pack.slot(f"b{k}")[0] for k in layers], np.int64),
    )


def weight_grads(
    layers: Sequence[tuple[Sequence[jax.Array], jax.Array]], layout: FlatLayout
) -> list[tuple[tuple[jax.Array, ...], jax.Array]]:
    """`dense_kernels.weight_grads`, computed by the CUDA kernel (same arguments and results; errors as `conv`):
    one call for the layers of each output width (up to `MAX_INPUTS` inputs and `MAX_CHANNELS` channels a call),
    which fills the GPU with fewer groups of rows a layer than a call a layer would. float32 inputs and gradients
    must be TF32 values (`tf32_operand`).

    A block sums one 16-channel chunk's products over a group of rows (`weight_grad_partials`); XLA adds the groups'
    partials.
    """
    if not computes(layers[0][1].dtype):
        return dense_kernels.weight_grads(layers, layout)
    grads = [None] * len(layers)
    for call in _calls(layers):
        group = [layers[k] for k in call]
        partials = weight_grad_partials(group, layout)
        split = dense_kernels.split_weight_grads(partials, [[x.shape[1] for x in inputs] for inputs, _ in group])
        for k, layer_grads in zip(call, split, strict=True):
            grads[k] = layer_grads
    return grads


def _calls(layers) -> list[list[int]]:
    """The layers' indices in groups that one kernel call takes: one output width, within the call's limits."""
    calls = {}  # output width -> its calls, the last one being filled
    for k, (inputs, grad) in enumerate(layers):
        width_calls = calls.setdefault(grad.shape[1], [[]])
        taken = [x for j in width_calls[-1] for x in layers[j][0]] + list(inputs)
        if width_calls[-1] and (len(taken) > MAX_INPUTS or sum(x.shape[1] for x in taken) > MAX_CHANNELS):
            width_calls.append([])
        width_calls[-1].append(k)
    return [call for width_calls in calls.values() for call in width_calls]


def weight_grad_partials(layers: Sequence[tuple[Sequence[jax.Array], jax.Array]], layout: FlatLayout) -> jax.Array:
    """The kernel's own result for layers of one output width: float32 (groups, 9, rows, cout), the kernel gradients
    summed over each group of rows (rows: every layer's input channels in order, then one bias row a layer). Raises
    where the kernel does not compute (`weight_grads` then falls back to Pallas)."""
    if not computes(layers[0][1].dtype):
        raise ValueError(
            "weight_grad_partials: full float32 products asked for, which the CUDA kernel does not compute."
        )
    inputs = [x for layer_inputs, _ in layers for x in layer_inputs]
    channels, cout = sum(x.shape[1] for x in inputs), layers[0][1].shape[1]
    chunks = channels // 16
    line_tiles = -(-layout.n * (layout.h + 2) // 4)  # tiles of four image lines (the kernel's, at one a line width)
    groups = max(1, min(line_tiles, -(-WEIGHT_GRAD_BLOCKS // chunks)))
    out_type = jax.ShapeDtypeStruct((groups, 9, channels + len(layers), cout), jnp.float32)
    call = jax.ffi.ffi_call("irrm_dense_weight_grad", out_type, vmap_method=VMAP_METHOD)
    grad_of = np.array([k for k, (layer_inputs, _) in enumerate(layers) for _ in layer_inputs], np.int64)
    return call(*inputs, *(grad for _, grad in layers), **_layout_attributes(layout), grad_of=grad_of)


def channels(c: int, dtype) -> int:
    """The channel count the kernels compute c channels with: the next multiple of 16 (32-byte rows, 16-channel
    tiles); the Pallas kernels' power of two where those compute instead (full float32)."""
    return -(-c // 16) * 16 if computes(dtype) else dense_kernels.padded_channels(c)


CUDA = dense_kernels.Ops(
    conv,
    weight_grads,
    tf32_operand,
    channels,
    kmajor_copies=True,
    residual_unit=residual_unit,
    last_two_layers=last_two_layers,
    joint_width=JOINT_WIDTH,
)
