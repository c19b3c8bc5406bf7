"""The DenseBlock's 3x3 convolution as a CUDA kernel (the speed option ``dense_cuda``), called through XLA's FFI.

`conv` is `dense_kernels.conv` (same flat arrays, kernels and epilogues, same results up to rounding) computed by
``dense_conv.cu``: a block stages one input tile and its one-pixel halo in shared memory and feeds all nine taps
from it, where the Pallas kernel loads every tap's rows from L2 again (nine times the reads, which bound it:
benchmarks/NOTES.md). The DenseBlock's kernel gradients stay Pallas kernels.

The kernel is compiled on first use with ``nvcc`` (CUDA 12 or newer: on ``PATH``, in ``$CUDA_HOME/bin`` or in
``/usr/local/cuda/bin``) against the installed jaxlib's FFI headers, into ``$IRRM_JAX_CACHE`` (default
``~/.cache/irrm_jax``), one library per source and jax version. bfloat16 and float32 (TF32 products, like cuDNN's
default) on NVIDIA GPUs of compute capability 9.0 (H100, H200); elsewhere use ``dense_pallas`` alone. Under
``jax.default_matmul_precision("highest")`` (or "float32") float32 convolutions go to the Pallas kernel, which
computes full float32 products (as `irrm_jax.verify`'s float32 check asks).
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
from irrm_jax.dense_kernels import FlatLayout

SOURCE = Path(__file__).with_name("dense_conv.cu")
TARGET = "irrm_dense_conv"
EPILOGUES = {"none": 0, "bias": 1, "bias_leaky": 2, "leaky_grad": 3}  # dense_conv.cu's `Epilogue`
GPU_ARCH = "sm_90"
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
    """Where the built library lives: named by a hash of the source, the jax version and the GPU target."""
    key = hashlib.sha256(SOURCE.read_bytes() + f"{jax.__version__} {GPU_ARCH}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("IRRM_JAX_CACHE", Path.home() / ".cache" / "irrm_jax"))
    return cache / f"dense_conv_{key}.so"


def build_library() -> Path:
    """Compiles dense_conv.cu into `library_path()` unless it is there (atomically: concurrent builds are safe)."""
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
        str(SOURCE),
    ]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        built = Path(tmp) / path.name
        result = subprocess.run([*command, "-o", str(built)], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
        os.replace(built, path)
    return path


@functools.cache
def register() -> None:
    """Builds (once) and loads the library, and registers its FFI handler with XLA for CUDA."""
    library = ctypes.cdll.LoadLibrary(str(build_library()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.IrrmDenseConv), platform="CUDA")


def conv(
    inputs: Sequence[jax.Array],
    kernels: Sequence[jax.Array],
    layout: FlatLayout,
    epilogue: str,
    extra: jax.Array | None = None,
) -> jax.Array:
    """`dense_kernels.conv`, computed by the CUDA kernel (see there for the arguments).

    Raises:
      ValueError: not on a GPU backend, or a dtype other than bfloat16 and float32.
      RuntimeError: the kernel could not be built (no nvcc, or a compile error).
    """
    if jax.default_backend() != "gpu":
        raise ValueError(f"dense_cuda runs on NVIDIA GPUs only (jax backend: {jax.default_backend()}).")
    dtype = inputs[0].dtype
    if dtype not in (jnp.bfloat16, jnp.float32):
        raise ValueError(f"dense_cuda computes in bfloat16 or float32, not {dtype}.")
    if dtype == jnp.float32 and jax.config.jax_default_matmul_precision in FULL_FLOAT32:
        return dense_kernels.conv(inputs, kernels, layout, epilogue, extra)
    register()
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((layout.rows, kernels[0].shape[1]), dtype))
    return call(
        *dense_kernels.conv_operands(inputs, kernels, extra),
        n=np.int64(layout.n),
        h=np.int64(layout.h),
        w=np.int64(layout.w),
        margin=np.int64(layout.margin_rows),
        n_inputs=np.int64(len(inputs)),
        epilogue=np.int64(EPILOGUES[epilogue]),
    )
