"""The IRN and IRRM model families behind one API: build a model by name and scale.

>>> model = build_model("irrm_m", 4)
>>> variables = model.init(jax.random.key(0), hr)            # hr: (N, H, W, 3) float in [0, 1]
>>> lr, z = model.apply(variables, hr)                       # (N, H/4, W/4, 3), (N, H/4, W/4, 45)
>>> hr_back = model.apply(variables, lr, z, method=model.inverse)

Both families are a flat list of invertible operations named ``operations_{i}`` (Haar levels and couplings),
mirroring the official IRN state dict, so an IRN checkpoint converts 1:1 (see `convert`). IRN uses DenseBlock
sub-networks (spec section 3); IRRM (spec section 5, a reconstruction) uses Enhanced Blocks grouped into Residual
Downscaling Modules. ``python -m irrm_jax.models`` prints every variant's parameter count and multiply-adds.
"""

import dataclasses
import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from irrm_jax.coupling import AdditiveCoupling, AffineCoupling
from irrm_jax.haar import check_divisible, haar_forward, haar_inverse
from irrm_jax.subnets import WEIGHT_PACKS, DenseBlock, EnhancedBlock


@dataclasses.dataclass(frozen=True)
class RescalerConfig:
    """Every architectural choice of an invertible rescaler.

    Attributes:
      scale: rescaling factor, a power of two (2, 4, 8).
      blocks_per_level: coupling blocks after each Haar level, one entry per level (log2(scale) entries).
      subnet: 'dense' (IRN's DenseBlock) or 'eb' (IRRM's Enhanced Block).
      nf: DenseBlock growth channels, or EB hidden width.
      n_res: residual units per EB (ignored by 'dense').
      haar_mode: 'per_level' (a Haar level before each level's blocks, as IRN) or 'upfront' (all Haar levels
        first, every block at the LR resolution with 3*scale**2 channels).
      rdms_per_level: Residual Downscaling Modules per level; a level's blocks are split evenly between them.
      long_skip: 'implicit' (the LR branch only ever gets additive updates, so the Haar LL band reaches the
        output through an identity path) or 'explicit' (each RDM ends with an additive coupling a += psi(b)).
      clamp: bound of the affine couplings' log-scale.
    """

    scale: int
    blocks_per_level: tuple[int, ...]
    subnet: Literal["dense", "eb"] = "dense"
    nf: int = 32
    n_res: int = 1
    haar_mode: Literal["per_level", "upfront"] = "per_level"
    rdms_per_level: int = 1
    long_skip: Literal["implicit", "explicit"] = "implicit"
    clamp: float = 1.0

    def __post_init__(self):
        if self.scale < 2 or self.scale & (self.scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {self.scale}.")
        if len(self.blocks_per_level) != self.levels:
            raise ValueError(
                f"blocks_per_level needs {self.levels} entries for scale {self.scale}, got {self.blocks_per_level}."
            )
        for field, allowed in [
            ("subnet", ("dense", "eb")),
            ("haar_mode", ("per_level", "upfront")),
            ("long_skip", ("implicit", "explicit")),
        ]:
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}.")
        if any(b % self.rdms_per_level for b in self.blocks_per_level):
            raise ValueError(
                f"rdms_per_level={self.rdms_per_level} must divide every entry of "
                f"blocks_per_level={self.blocks_per_level}."
            )

    @property
    def levels(self) -> int:
        return int(math.log2(self.scale))

    @property
    def out_channels(self) -> int:
        return 3 * self.scale**2


class HaarLevel(nn.Module):
    """One Haar level as an invertible operation without parameters."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return haar_forward(x)

    def inverse(self, y: jax.Array) -> jax.Array:
        return haar_inverse(y)


class InvertibleRescaler(nn.Module):
    """HR image <-> (LR image, latent z), exactly invertible.

    Attributes:
      config: the architecture.
      compute_dtype: dtype of the sub-network convolutions (float32; bfloat16 for speed; float64 for exactness
        checks with jax_enable_x64). Parameters are always float32; coupling arithmetic runs in the input's
        float dtype.
      channel_multiple: speed option: pad sub-network channels to this multiple (see `subnets`).
      fuse_gh: speed option: evaluate each coupling's G and H together (see `coupling`): with ``dense_cuda`` one call
        of each kernel for both (faster); with XLA's convolutions grouped ones (slower: benchmarks/NOTES.md).
      dense_outward: speed option: DenseBlocks convolve each feature map once into all later convs (see `subnets`).
      dense_pallas: speed option: the sub-networks (DenseBlocks or Enhanced Blocks) run as Pallas GPU kernels (see
        `dense_kernels`, `enhanced_kernels`).
      dense_cuda: speed option: ``dense_pallas`` with the sub-networks' convolutions and kernel gradients in CUDA
        (`cuda_kernels`; NVIDIA GPUs, bfloat16 or float32). Implies ``dense_pallas``.
      unit_kernel: speed option, with ``dense_cuda``: IRRM's last residual unit as one kernel in inference from
        weight packs (`cuda_kernels.residual_unit`); False: its two convolutions' kernels, for comparison.
    The speed options change neither the function nor the parameters.
    """

    config: RescalerConfig
    compute_dtype: Any = jnp.float32
    channel_multiple: int = 1
    fuse_gh: bool = False
    dense_outward: bool = False
    dense_pallas: bool = False
    dense_cuda: bool = False
    unit_kernel: bool = True

    @property
    def scale(self) -> int:
        return self.config.scale

    def setup(self):
        cfg = self.config
        speed = dict(dtype=self.compute_dtype, channel_multiple=self.channel_multiple)
        if cfg.subnet == "dense":
            subnet = functools.partial(
                DenseBlock,
                growth=cfg.nf,
                outward=self.dense_outward,
                pallas=self.dense_pallas,
                cuda=self.dense_cuda,
                **speed,
            )
        else:
            subnet = functools.partial(
                EnhancedBlock,
                width=cfg.nf,
                n_res=cfg.n_res,
                pallas=self.dense_pallas,
                cuda=self.dense_cuda,
                unit_kernel=self.unit_kernel,
                **speed,
            )
        ops = []
        if cfg.haar_mode == "upfront":
            ops += [HaarLevel() for _ in range(cfg.levels)]
        for level, blocks in enumerate(cfg.blocks_per_level):
            if cfg.haar_mode == "per_level":
                ops.append(HaarLevel())
            channels = cfg.out_channels if cfg.haar_mode == "upfront" else 3 * 4 ** (level + 1)
            for _ in range(cfg.rdms_per_level):
                for _ in range(blocks // cfg.rdms_per_level):
                    ops.append(AffineCoupling(channels, subnet, clamp=cfg.clamp, fuse_gh=self.fuse_gh))
                if cfg.long_skip == "explicit":
                    ops.append(AdditiveCoupling(channels, subnet))
        self.operations = ops  # Flax names them operations_0, operations_1, ... like the official code.

    def _check_float(self, x: jax.Array, what: str) -> None:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"{what} must be a float array with values in [0, 1], got dtype {x.dtype}; "
                "convert uint8 images with x / 255."
            )

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Downscales: x (N, H, W, 3) float in [0, 1] -> (LR (N, H/s, W/s, 3), z (N, H/s, W/s, 3s^2 - 3)).

        The LR is not clipped or quantised here (training does that); z should follow N(0, I) once trained.

        Raises:
          ValueError: for a non-float input, a channel count other than 3, or a size the scale does not divide.
        """
        self._check_float(x, "the HR image")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"expected an NHWC batch of RGB images with shape (N, H, W, 3), got {x.shape}; "
                "convert grayscale or RGBA images to RGB first."
            )
        check_divisible(x.shape[1], x.shape[2], self.scale, f"HR image (scale x{self.scale})")
        h = x
        for op in self.operations:
            h = op(h)
        return h[..., :3], h[..., 3:]

    def inverse(self, lr: jax.Array, z: jax.Array) -> jax.Array:
        """Upscales: (LR (N, h, w, 3), z (N, h, w, 3s^2 - 3)) -> HR (N, s*h, s*w, 3).

        Raises:
          ValueError: when the shapes of lr and z do not fit this model.
        """
        self._check_float(lr, "the LR image")
        zc = self.config.out_channels - 3
        if lr.ndim != 4 or lr.shape[-1] != 3:
            raise ValueError(f"expected LR of shape (N, h, w, 3), got {lr.shape}.")
        if z.shape != lr.shape[:-1] + (zc,):
            raise ValueError(
                f"z must have shape {lr.shape[:-1] + (zc,)} for LR {lr.shape} at x{self.scale}, got {z.shape}."
            )
        h = jnp.concatenate([lr, z.astype(lr.dtype)], axis=-1)
        for op in reversed(self.operations):
            h = op.inverse(h)
        return h


# The registry: each variant's architecture per scale. IRN is the official network; IRRM's S/M/L sizes are
# our choices within the budgets of spec decision 3 (the official configurations are unpublished).
_IRN = {s: dict(subnet="dense", nf=32, blocks_per_level=(8,) * int(math.log2(s))) for s in (2, 4, 8)}
_IRRM_S = dict(subnet="eb", nf=32, n_res=1)
_IRRM_M = dict(subnet="eb", nf=32, n_res=1)
_IRRM_L = dict(subnet="eb", nf=48, n_res=1)
VARIANTS: dict[str, dict[int, dict[str, Any]]] = {
    "irn": _IRN,
    "irrm_s": {2: dict(_IRRM_S, blocks_per_level=(4,)), 4: dict(_IRRM_S, blocks_per_level=(2, 6))},
    "irrm_m": {2: dict(_IRRM_M, blocks_per_level=(6,)), 4: dict(_IRRM_M, blocks_per_level=(4, 8))},
    "irrm_l": {2: dict(_IRRM_L, blocks_per_level=(7,)), 4: dict(_IRRM_L, blocks_per_level=(4, 11))},
}


def model_config(name: str, scale: int, **overrides: Any) -> RescalerConfig:
    """The `RescalerConfig` of a named variant, with optional field overrides.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones) or a scale the variant lacks.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(VARIANTS)}.")
    if scale not in VARIANTS[name]:
        raise ValueError(
            f"model {name!r} has no x{scale} variant; valid scales: {', '.join(str(s) for s in VARIANTS[name])}."
        )
    fields = dict(VARIANTS[name][scale], scale=scale)
    fields.update(overrides)
    if isinstance(fields.get("blocks_per_level"), list):
        fields["blocks_per_level"] = tuple(fields["blocks_per_level"])
    return RescalerConfig(**fields)


def build_model(
    name: str,
    scale: int,
    compute_dtype: Any = jnp.float32,
    channel_multiple: int = 1,
    fuse_gh: bool = False,
    dense_outward: bool = False,
    dense_pallas: bool = False,
    dense_cuda: bool = False,
    unit_kernel: bool = True,
    **overrides: Any,
) -> InvertibleRescaler:
    """Builds a variant by name ('irn', 'irrm_s', 'irrm_m', 'irrm_l') and scale (2, 4; IRN also 8).

    Args:
      name: the variant.
      scale: the rescaling factor.
      compute_dtype: sub-network compute dtype (jnp.float32, jnp.bfloat16, jnp.float64).
      channel_multiple, fuse_gh, dense_outward, dense_pallas, dense_cuda, unit_kernel: speed options (see
        `InvertibleRescaler`); same function and parameters.
      **overrides: `RescalerConfig` fields to change, e.g. ``blocks_per_level=(2, 2)`` for a tiny test model.
    """
    return InvertibleRescaler(
        model_config(name, scale, **overrides),
        compute_dtype=compute_dtype,
        channel_multiple=channel_multiple,
        fuse_gh=fuse_gh,
        dense_outward=dense_outward,
        dense_pallas=dense_pallas,
        dense_cuda=dense_cuda,
        unit_kernel=unit_kernel,
    )


def with_dense_cuda(model: InvertibleRescaler) -> InvertibleRescaler:
    """The model with its sub-networks' kernels in CUDA (``dense_cuda``) and each coupling's G and H as one call of
    each kernel (``fuse_gh``, faster with those kernels). The same function."""
    return model.clone(dense_cuda=True, fuse_gh=True)


def with_weight_packs(model: InvertibleRescaler, variables: dict) -> dict:
    """``variables`` plus the sub-networks' weights packed once as the kernels read them (the ``WEIGHT_PACKS``
    collection), so that calls of ``model.apply`` with them skip the packing: the same outputs, fewer small kernels a
    call. For inference: the packs do not follow later changes of the parameters, and gradients through them are
    not defined. Models without ``dense_pallas`` or ``dense_cuda`` get ``variables`` back as they are."""
    if not (model.dense_pallas or model.dense_cuda):
        return variables
    params = {"params": variables["params"]}
    x = jnp.zeros((1, model.scale, model.scale, 3), jnp.float32)  # any image: only the packs are kept

    @jax.jit
    def packs(params):
        # G and H unfused, so that each stores its own pack (the fused call stacks them)
        return model.clone(fuse_gh=False).apply(params, x, mutable=[WEIGHT_PACKS])[1]

    return {**variables, **packs(params)}


def main() -> None:
    """Prints the model table: parameters and multiply-adds per HR pixel of every variant."""
    from irrm_jax.complexity import model_table

    print(model_table())


if __name__ == "__main__":
    main()
