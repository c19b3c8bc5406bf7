"""Haar wavelet transform with IRN's conventions (spec section 2).

One level maps (N, H, W, C) to (N, H/2, W/2, 4C). Bands are averages and differences of each 2x2 block with
normalisation 1/4 (so band 0 is the plain 2x2 mean, an LR-looking image), stacked *band-major*: output channel
``k * C + c`` holds band ``k`` of input channel ``c``. The inverse uses the same +-1 patterns without division,
since the 4x4 sign matrix W satisfies W W^T = 4 I.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Rows: bands LL, horizontal detail, vertical detail, diagonal. Columns: pixels p00, p01, p10, p11.
SIGNS = np.array(
    [
        [1, 1, 1, 1],
        [1, -1, 1, -1],
        [1, 1, -1, -1],
        [1, -1, -1, 1],
    ],
    dtype=np.float32,
)


def check_divisible(height: int, width: int, factor: int, what: str = "input") -> None:
    """Raises ValueError unless height and width are multiples of factor."""
    if height % factor or width % factor:
        raise ValueError(
            f"{what} height and width must be multiples of {factor}, got {height}x{width}; "
            f"crop or pad the image to a multiple of {factor} (e.g. {height - height % factor}x"
            f"{width - width % factor})."
        )


def haar_forward(x: jax.Array) -> jax.Array:
    """One Haar level: (N, H, W, C) -> (N, H/2, W/2, 4C), band-major, normalised by 1/4."""
    n, h, w, c = x.shape
    check_divisible(h, w, 2, "Haar input")
    p00 = x[:, 0::2, 0::2, :]
    p01 = x[:, 0::2, 1::2, :]
    p10 = x[:, 1::2, 0::2, :]
    p11 = x[:, 1::2, 1::2, :]
    bands = [
        (p00 + p01 + p10 + p11),
        (p00 - p01 + p10 - p11),
        (p00 + p01 - p10 - p11),
        (p00 - p01 - p10 + p11),
    ]
    return jnp.concatenate(bands, axis=-1) * 0.25


def haar_inverse(y: jax.Array) -> jax.Array:
    """Exact inverse of `haar_forward`: (N, H/2, W/2, 4C) -> (N, H, W, C)."""
    n, h, w, c4 = y.shape
    if c4 % 4:
        raise ValueError(f"Haar inverse needs a channel count divisible by 4, got {c4}.")
    c = c4 // 4
    ll, b1, b2, b3 = (y[..., k * c : (k + 1) * c] for k in range(4))
    p00 = ll + b1 + b2 + b3
    p01 = ll - b1 + b2 - b3
    p10 = ll + b1 - b2 - b3
    p11 = ll - b1 - b2 + b3
    top = jnp.stack([p00, p01], axis=3)  # (N, h, w, 2, C): column offset
    bottom = jnp.stack([p10, p11], axis=3)
    blocks = jnp.stack([top, bottom], axis=2)  # (N, h, 2, w, 2, C): row offset, column offset
    return blocks.reshape(n, 2 * h, 2 * w, c)


def haar_forward_levels(x: jax.Array, levels: int) -> jax.Array:
    """Applies `levels` Haar levels in a row: channel ``k2 * 4C + k1 * C + c`` after two levels."""
    for _ in range(levels):
        x = haar_forward(x)
    return x


def haar_inverse_levels(y: jax.Array, levels: int) -> jax.Array:
    """Exact inverse of `haar_forward_levels`."""
    for _ in range(levels):
        y = haar_inverse(y)
    return y


def official_haar_weights(channels: int) -> np.ndarray:
    """The frozen filter bank IRN stores as ``operations.{i}.haar_weights``: shape (4C, 1, 2, 2).

    Output channel ``4c + k`` holds band ``k``'s 2x2 sign pattern; used to validate converted checkpoints.
    """
    patterns = SIGNS.reshape(4, 1, 2, 2)
    return np.concatenate([patterns] * channels, axis=0)
