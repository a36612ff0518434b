"""Multi-scale training on the device: the official `Exp.random_resize` + `Exp.preprocess`.

The data pipeline always produces `input_size` images; every `interval` steps a new size is chosen
and the batch is bilinearly resized on the device (as the official trainer does with
`F.interpolate(mode="bilinear", align_corners=False)`), the labels scaled with it.
The size depends only on (step // interval, seed), so every host picks the same one without
communication (the official broadcasts rank 0's choice).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def size_range(
    base_size: Sequence[int],
    multiscale_range: int = 5,
    random_size: Sequence[int] | None = None,
) -> tuple[int, int]:
    """(min, max) size factor in units of 32, both inclusive (official `random_size` or
    int(H / 32) -+ multiscale_range)."""
    if random_size:
        lo, hi = int(random_size[0]), int(random_size[1])
    else:
        lo = int(base_size[0] / 32) - multiscale_range
        hi = int(base_size[0] / 32) + multiscale_range
    if lo < 1 or hi < lo:
        raise ValueError(
            f"multi-scale range ({lo}, {hi}) (units of 32) is empty or not positive: "
            f"base_size={tuple(base_size)}, multiscale_range={multiscale_range}, "
            f"random_size={random_size}"
        )
    return lo, hi


def multiscale_size(
    step: int,
    seed: int,
    base_size: Sequence[int],
    multiscale_range: int = 5,
    random_size: Sequence[int] | None = None,
    interval: int = 10,
) -> tuple[int, int]:
    """Training input size (h, w) for global `step`.

    As the official trainer: the first `interval` steps use `base_size`; then each block of
    `interval` steps gets size = randint(lo, hi) (inclusive) drawn from a generator seeded with
    (seed, step // interval), giving (32 * size, 32 * int(size * W / H)) (aspect ratio kept).
    """
    period = int(step) // int(interval)
    if period == 0:
        return int(base_size[0]), int(base_size[1])
    lo, hi = size_range(base_size, multiscale_range, random_size)
    size = int(np.random.default_rng([int(seed), period]).integers(lo, hi + 1))
    factor = base_size[1] * 1.0 / base_size[0]
    return int(32 * size), 32 * int(size * factor)


def _linear_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's align_corners=False source indices and weights (float32, as its CPU kernel).

    src = (dst + 0.5) * in / out - 0.5, clamped at 0; i1 = i0 + 1 except at the last pixel.
    -> (i0 [out] int32, i1 [out] int32, lambda1 [out] float32).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = np.where(i0 + 1 < in_size, i0 + 1, i0).astype(np.int32)
    return i0, i1, lam1


@functools.partial(jax.jit, static_argnames=("size",))
def resize_batch(
    images: jax.Array, labels: jax.Array, size: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, C] float, labels [B, G, 5] (class, cx, cy, w, h) -> resized to size (h, w).

    Equal to torch `F.interpolate(mode="bilinear", align_corners=False)` (no antialias, also when
    downsampling; `jax.image.resize` antialiases and differs at the borders), computed as the
    torch CPU kernel: along W first, then H. cx, w are scaled by w_new / W and cy, h by h_new / H;
    zero padding rows stay zero. The same size returns the inputs unchanged (as official).
    """
    in_h, in_w = images.shape[1], images.shape[2]
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (in_h, in_w):
        return images, labels
    dtype = images.dtype
    y0, y1, ly = _linear_indices(in_h, out_h)
    x0, x1, lx = _linear_indices(in_w, out_w)
    lx1 = jnp.asarray(lx, dtype)[None, None, :, None]
    lx0 = jnp.asarray(1.0 - lx, dtype)[None, None, :, None]
    ly1 = jnp.asarray(ly, dtype)[None, :, None, None]
    ly0 = jnp.asarray(1.0 - ly, dtype)[None, :, None, None]

    rows0 = jnp.take(images, y0, axis=1)
    rows1 = jnp.take(images, y1, axis=1)
    top = lx0 * jnp.take(rows0, x0, axis=2) + lx1 * jnp.take(rows0, x1, axis=2)
    bottom = lx0 * jnp.take(rows1, x0, axis=2) + lx1 * jnp.take(rows1, x1, axis=2)
    out = top * ly0 + bottom * ly1

    scale_x = out_w / in_w
    scale_y = out_h / in_h
    factors = jnp.asarray([1.0, scale_x, scale_y, scale_x, scale_y], labels.dtype)
    return out, labels * factors
