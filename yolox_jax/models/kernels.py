"""The numerics of the layers: BatchNorm and convolutions, in forms chosen for speed.

Each function equals its textbook definition up to float32 rounding (tested against XLA's own
convolutions and against the official fixtures). Why they exist, measured on XLA's CPU backend
(2 cores, YOLOX-Nano at 416, batch 8):

* BatchNorm + activation autodiff makes ~6 passes over every activation and keeps several
  intermediates; `batch_norm_train` keeps only its input and recomputes, with a hand-written
  backward: the two reductions it needs and one elementwise pass.
* XLA CPU runs grouped (depthwise) convolutions ~40x slower than shifted multiply-adds, and the
  autodiff of those taps is a chain of full-size pads; `depthwise_conv` has a custom backward:
  the input gradient is the same taps over the dilated, padded cotangent, the kernel gradient
  one reduction per tap, image by image so the operands stay in cache.
* The SPP max pools' gradient is a windowed argmax in XLA CPU; `max_pool` is shifted maxima.
* 1x1 convolutions are matrix products; `dot_general` forward and backward is ~2x faster than
  the convolution path (which also transposes operands for the weight gradient).

All of it is ordinary JAX: it shards, jits and differentiates like any other code, and on
GPU/TPU the model uses XLA's convolutions instead (`Settings.kernels`). The one exception is
opt-in per call: on a single CPU device, BatchNorm + activation, the depthwise conv and the
weight gradients of dense and 1x1 convs can run as the native kernels of `native.py` (XLA's own
BN form makes ~15 passes over each activation for forward + backward where 4 suffice; its conv
weight gradient is a whole-image convolution on one thread); the pure-JAX forms below stay the
reference and the fallback.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from . import native

_AXES = (0, 1, 2)  # the reduction axes of an NHWC activation
_CHUNK_ELEMENTS = 1 << 18  # depthwise kernel gradient: images per step of its loop, see below


def batch_norm_inference(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array,
                         bias: jax.Array, eps: float) -> jax.Array:
    """BN with running statistics, float32 (whatever x's dtype), [..., C] -> [..., C]."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (xf - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of [B, H, W, C] in one pass over x.

    E[(x-k)^2] - E[x-k]^2 with k a per-channel sample of x: one read of x for both moments, and
    the shift removes the cancellation E[x^2] - E[x]^2 suffers when |mean| >> std (the stem sees
    raw 0..255 pixels)."""
    shift = jax.lax.stop_gradient(x[0, 0, 0])
    xs = x - shift
    m1 = jnp.mean(xs, _AXES)
    m2 = jnp.mean(xs * xs, _AXES)
    return m1 + shift, jnp.maximum(m2 - m1 * m1, 0.0)


def _act(z: jax.Array, act: str) -> jax.Array:
    if act == "silu":
        return z * jax.nn.sigmoid(z)
    if act == "relu":
        return jnp.maximum(z, 0.0)
    if act == "lrelu":
        return jnp.where(z > 0, z, 0.1 * z)
    if act == "none":
        return z
    raise ValueError(f"unsupported activation {act!r}; expected 'silu', 'relu', 'lrelu' or 'none'")


def _act_grad(z: jax.Array, act: str) -> jax.Array:
    """d act(z) / dz, elementwise."""
    if act == "silu":
        s = jax.nn.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if act == "relu":
        return (z > 0).astype(z.dtype)
    if act == "lrelu":
        return jnp.where(z > 0, 1.0, 0.1).astype(z.dtype)
    return jnp.ones_like(z)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_act_train(x, scale, bias, eps, act):
    mean, var = _moments(x)
    z = (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias
    return _act(z, act), mean, var


def _bn_act_train_fwd(x, scale, bias, eps, act):
    mean, var = _moments(x)
    rstd = jax.lax.rsqrt(var + eps)
    z = (x - mean) * (rstd * scale) + bias
    # Only x and per-channel vectors are kept: the backward recomputes the normalised values
    # and the activation's derivative, which costs less than writing and reading them back.
    return (_act(z, act), mean, var), (x, mean, rstd, scale, bias)


def _bn_act_train_bwd(eps, act, res, cotangents):
    # The batch statistics feed only the running averages, which nothing differentiates (as in
    # torch), so their cotangents are dropped.
    x, mean, rstd, scale, bias = res
    n = x.shape[0] * x.shape[1] * x.shape[2]
    xhat = (x - mean) * rstd
    g = cotangents[0] * _act_grad(xhat * scale + bias, act)
    dbias = jnp.sum(g, _AXES)
    dscale = jnp.sum(g * xhat, _AXES)
    dx = (scale * rstd) * (g - dbias / n - xhat * (dscale / n))
    return dx, dscale, dbias


_bn_act_train.defvjp(_bn_act_train_fwd, _bn_act_train_bwd)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
                     dtype: Any, act: str = "none",
                     cpu: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """act(BN(x)) with batch statistics over [B, H, W, C] -> (y in `dtype`, mean [C], biased
    var [C]); statistics, normalisation and activation in float32. Under jit over a
    batch-sharded x the moments are over the global batch. `act`: silu, relu, lrelu or none.
    `cpu`: use the native kernel (`native.py`) where it applies."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if cpu and native.usable(xf):
        y, mean, var = native.bn_act_train(xf, scale, bias, float(eps), act)
    else:
        y, mean, var = _bn_act_train(xf, scale, bias, float(eps), act)
    return y.astype(dtype), mean, var


def _taps(xp: jax.Array, kernel: jax.Array, stride: int, h: int, w: int) -> jax.Array:
    """sum_ij xp[:, s*y + i, s*x + j] * kernel[i, j]: a depthwise correlation of an already
    padded [B, Hp, Wp, C] input with [k, k, C] -> [B, h, w, C]."""
    k, out, dtype = kernel.shape[0], None, xp.dtype
    acc = jnp.promote_types(dtype, jnp.float32)  # bfloat16 taps add up in float32, as XLA's conv
    xp, kernel = xp.astype(acc), kernel.astype(acc)
    for i in range(k):
        for j in range(k):
            tap = xp[:, i : i + stride * (h - 1) + 1 : stride,
                     j : j + stride * (w - 1) + 1 : stride] * kernel[i, j]
            out = tap if out is None else out + tap
    return out.astype(dtype)


def _out_size(n: int, k: int, stride: int) -> int:
    pad = (k - 1) // 2
    return (n + 2 * pad - k) // stride + 1


def _pad_hw(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x, kernel, stride):
    k = kernel.shape[0]
    h, w = _out_size(x.shape[1], k, stride), _out_size(x.shape[2], k, stride)
    return _taps(_pad_hw(x, (k - 1) // 2), kernel, stride, h, w)


def _depthwise_fwd(x, kernel, stride):
    return _depthwise(x, kernel, stride), (x, kernel)


def _kernel_grad(xp: jax.Array, g: jax.Array, k: int, stride: int) -> jax.Array:
    """d kernel [k, k, C] = sum over b, y, x of the tap times the cotangent, float32."""
    h, w = g.shape[1], g.shape[2]
    sums = [
        jnp.sum(xp[:, i : i + stride * (h - 1) + 1 : stride,
                   j : j + stride * (w - 1) + 1 : stride] * g, _AXES, dtype=jnp.float32)
        for i in range(k) for j in range(k)
    ]
    return jnp.stack(sums).reshape(k, k, g.shape[-1])


def _depthwise_bwd(stride, res, g):
    x, kernel = res
    k = kernel.shape[0]
    pad = (k - 1) // 2
    _, height, width, _ = x.shape
    h, w = g.shape[1], g.shape[2]
    # Input gradient: the transposed convolution, i.e. the flipped kernel's taps over the
    # cotangent dilated by the stride and padded so that the result is H x W again.
    lo = k - 1 - pad
    gp = jax.lax.pad(g, jnp.zeros((), g.dtype), (
        (0, 0, 0),
        (lo, height + k - 1 - lo - (stride * (h - 1) + 1), stride - 1),
        (lo, width + k - 1 - lo - (stride * (w - 1) + 1), stride - 1),
        (0, 0, 0),
    ))
    dx = _taps(gp, kernel[::-1, ::-1], 1, height, width)
    # Kernel gradient over chunks of images in a loop: the k*k reductions of a chunk then read
    # operands that sit in cache instead of streaming the whole batch k*k times (3-4x faster on
    # large maps). A chunk is the most images (a divisor of B) within _CHUNK_ELEMENTS values.
    xp = _pad_hw(x, pad)
    b = x.shape[0]
    per_image = h * w * x.shape[-1]
    chunk = max([c for c in range(1, b + 1) if b % c == 0 and c * per_image <= _CHUNK_ELEMENTS]
                or [1])
    if chunk < b:
        def chunk_grad(a):
            return _kernel_grad(a[0], a[1], k, stride)

        split = (lambda v: v.reshape(b // chunk, chunk, *v.shape[1:]))
        dk = jnp.sum(jax.lax.map(chunk_grad, (split(xp), split(g))), 0)
    else:
        dk = _kernel_grad(xp, g, k, stride)
    return dx, dk.astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1,
                   native_ok: bool = True) -> jax.Array:
    """Depthwise k x k conv, padding (k-1)//2: [B, H, W, C], kernel [k, k, 1, C] (HWIO, as a
    grouped `nn.Conv`) -> [B, H', W', C]; the native kernel where it applies (float32, one
    CPU device) unless `native_ok` is False."""
    if native_ok and x.ndim == 4 and kernel.shape[0] % 2 and native.usable(x, kernel):
        return native.depthwise(x, kernel[:, :, 0, :], int(stride))
    return _depthwise(x, kernel[:, :, 0, :], int(stride))


def max_pool(x: jax.Array, k: int) -> jax.Array:
    """k x k max pool, stride 1, -inf padding k//2, [B, H, W, C], as shifted maxima: a row pass
    then a column pass (the max is separable). Same values as `reduce_window`, and a backward of
    elementwise selects where XLA CPU's reduce-window gradient (select-and-scatter, lowered to a
    windowed argmax) costs ~20x more. Exact ties share the gradient (jnp.maximum's rule) instead
    of sending it to the first maximum; the total reaching a tied value is the same."""
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0)), constant_values=-jnp.inf)
    rows = xp[:, 0 : x.shape[1]]
    for i in range(1, k):
        rows = jnp.maximum(rows, xp[:, i : i + x.shape[1]])
    rp = jnp.pad(rows, ((0, 0), (0, 0), (p, p), (0, 0)), constant_values=-jnp.inf)
    out = rp[:, :, 0 : x.shape[2]]
    for j in range(1, k):
        out = jnp.maximum(out, rp[:, :, j : j + x.shape[2]])
    return out


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """[..., Cin] x [Cin, Cout] -> [..., Cout], float32 accumulation, in x's dtype."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=acc)
    return y.astype(x.dtype)


@jax.custom_vjp
def _pointwise(x, w):
    return _matmul(x, w)


def _pointwise_fwd(x, w):
    return _matmul(x, w), (x, w)


def _pointwise_bwd(res, g):
    x, w = res
    dx = _matmul(g, w.T)
    if x.ndim == 4 and w.shape[1] % 16 == 0 and native.usable(x, g):
        # the native outer-product sum: 1.2-3.5x faster than the products below on XLA CPU
        return dx, native.conv_weight_grad(x, g, 1, 1)[0, 0]
    # Weight gradient as one [Cin, Cout] product per image, summed: autodiff's single product
    # over all B*H*W rows makes XLA CPU write the cotangent transposed ([Cout, B*H*W]) first.
    b = x.shape[0]
    xs, gs = x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1])
    acc = jnp.promote_types(x.dtype, jnp.float32)
    dw = jax.lax.dot_general(xs, gs, (((1,), (1,)), ((0,), (0,))), preferred_element_type=acc)
    return dx, jnp.sum(dw, 0).astype(w.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1x1 stride-1 conv as a matrix product: [B, H, W, Cin] x [1, 1, Cin, Cout] ->
    [B, H, W, Cout], accumulated in float32 when x is bfloat16 (as XLA's convolution does)."""
    return _pointwise(x, kernel[0, 0])


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, groups: int = 1) -> jax.Array:
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_native_wgrad(x, kernel, stride):
    return _xla_conv(x, kernel, stride)


def _dense_native_wgrad_fwd(x, kernel, stride):
    return _xla_conv(x, kernel, stride), (x, kernel)


def _dense_native_wgrad_bwd(stride, res, g):
    x, kernel = res
    dx = jax.vjp(lambda a: _xla_conv(a, kernel, stride), x)[1](g)[0]
    return dx, native.conv_weight_grad(x, g, kernel.shape[0], stride)


_dense_native_wgrad.defvjp(_dense_native_wgrad_fwd, _dense_native_wgrad_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, groups: int = 1,
           cpu: bool = False) -> jax.Array:
    """Conv2d with symmetric padding (k-1)//2: [B, H, W, Cin], kernel [k, k, Cin/groups, Cout]
    -> [B, H', W', Cout]. `cpu` selects the CPU formulations above where they apply; for a
    dense k x k conv that is XLA's convolution with the native weight gradient (XLA CPU runs
    that one as a convolution over the whole image on one thread, 2-4x slower than forward)."""
    k, cin, cout = kernel.shape[0], x.shape[-1], kernel.shape[-1]
    if cpu and k == 1 and stride == 1 and groups == 1:
        return pointwise_conv(x, kernel)
    if cpu and groups > 1 and groups == cin == cout:
        return depthwise_conv(x, kernel, stride)
    if (cpu and groups == 1 and k > 1 and k % 2 and cout % 16 == 0 and x.ndim == 4
            and native.usable(x, kernel)):
        return _dense_native_wgrad(x, kernel, int(stride))
    return _xla_conv(x, kernel, stride, groups)
