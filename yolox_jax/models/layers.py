"""The YOLOX building blocks (official `yolox/models/network_blocks.py`), NHWC.

Submodule names mirror the official PyTorch module paths (`conv`, `bn`, `m.0`, ...), so that a
Flax parameter path joined with '.' *is* the official state-dict key (see `weights/convert.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

# torch's default Conv2d init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """torch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def activation(name: str):
    """The official `get_activation`: silu, relu, or lrelu (LeakyReLU 0.1)."""
    if name == "silu":
        return nn.silu
    if name == "relu":
        return nn.relu
    if name == "lrelu":
        return lambda x: nn.leaky_relu(x, 0.1)
    raise ValueError(f"unsupported activation {name!r}; expected 'silu', 'relu' or 'lrelu'")


class BatchNorm(nn.Module):
    """BatchNorm2d with torch semantics over NHWC.

    Normalises with the biased batch variance but stores the *unbiased* one in the running
    variance (torch does; Flax's BatchNorm stores the biased one), statistics in float32
    whatever the compute dtype. Under `jax.jit` with a batch-sharded input the mean is taken over
    the global batch (synchronised BN).
    """

    momentum: float = 0.03  # torch convention: new = (1 - m) * old + m * batch
    epsilon: float = 1e-3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = int(np.prod([x.shape[a] for a in axes]))
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class DepthwiseConv(nn.Module):
    """A depthwise conv as k*k shifted multiply-adds, [B, H, W, C] -> [B, H/s, W/s, C].

    Same parameter (`kernel` [k, k, 1, C], HWIO) and result as a grouped `nn.Conv`, but XLA's
    CPU backend runs grouped convolutions ~40x slower than these fused elementwise taps
    (forward and backward), which dominates YOLOX-Nano training on a CPU.
    """

    ksize: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, c = self.ksize, self.stride, x.shape[-1]
        kernel = self.param("kernel", torch_conv_kernel_init, (k, k, 1, c), jnp.float32)
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        pad = (k - 1) // 2
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h = (x.shape[1] + 2 * pad - k) // s + 1
        w = (x.shape[2] + 2 * pad - k) // s + 1
        out = None
        for i in range(k):
            for j in range(k):
                tap = xp[:, i : i + s * (h - 1) + 1 : s, j : j + s * (w - 1) + 1 : s, :]
                term = tap * kernel[i, j, 0]
                out = term if out is None else out + term
        return out


_DEPTHWISE_IMPL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "yolox_jax_depthwise_impl", default=None
)


@contextlib.contextmanager
def depthwise_impl(impl: str) -> Iterator[None]:
    """Trace depthwise convs as `impl` ("taps" or "conv") inside the block, whatever the backend
    or environment: the ONNX exporter traces the grouped-conv form (one grouped Conv node)."""
    if impl not in ("taps", "conv"):
        raise ValueError(f"depthwise impl must be 'taps' or 'conv', got {impl!r}")
    token = _DEPTHWISE_IMPL.set(impl)
    try:
        yield
    finally:
        _DEPTHWISE_IMPL.reset(token)


def use_depthwise_taps() -> bool:
    """Shifted taps on CPU, XLA's grouped conv elsewhere; `depthwise_impl(...)` (a context) or
    `YOLOX_JAX_DEPTHWISE=taps|conv` forces one (same parameters and results either way)."""
    forced = _DEPTHWISE_IMPL.get() or os.environ.get("YOLOX_JAX_DEPTHWISE", "").lower()
    if forced in ("taps", "conv"):
        return forced == "taps"
    return jax.default_backend() == "cpu"


class BaseConv(nn.Module):
    """Conv2d (symmetric padding (k-1)//2, no bias) -> BatchNorm -> activation.

    With BatchNorm-folded variables (`export.fold_batchnorm`: `conv` has a `bias`, no `bn`, no
    batch_stats) the same module computes conv + bias -> activation (inference only).
    """

    features: int
    ksize: int
    stride: int = 1
    groups: int = 1
    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pad = (self.ksize - 1) // 2
        depthwise = self.groups > 1 and self.groups == x.shape[-1] == self.features
        if depthwise and use_depthwise_taps():
            x = DepthwiseConv(self.ksize, self.stride, self.dtype, name="conv")(x)
        else:
            x = nn.Conv(
                self.features,
                (self.ksize, self.ksize),
                strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                feature_group_count=self.groups,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=torch_conv_kernel_init,
                name="conv",
            )(x)
        folded = self._folded_bias()
        if folded is not None:
            if train:
                raise ValueError("BatchNorm-folded variables are for inference only (train=False)")
            x = x + folded.astype(x.dtype)
        else:
            x = BatchNorm(self.bn_momentum, self.bn_eps, self.dtype, name="bn")(
                x, use_running_average=not train
            )
        return activation(self.act)(x)

    def _folded_bias(self) -> jax.Array | None:
        """The folded conv bias [C] when the variables are BatchNorm-folded, else None."""
        if self.is_initializing():
            return None
        params = self.variables.get("params", {})
        if "bn" in params or "bias" not in params.get("conv", {}):
            return None
        return jnp.asarray(params["conv"]["bias"])


class DWConv(nn.Module):
    """Depthwise conv (`dconv`) followed by a pointwise conv (`pconv`)."""

    features: int
    ksize: int
    stride: int = 1
    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype)
        x = BaseConv(x.shape[-1], self.ksize, self.stride, groups=x.shape[-1], name="dconv", **kw)(
            x, train
        )
        return BaseConv(self.features, 1, 1, name="pconv", **kw)(x, train)


def conv_block(depthwise: bool):
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    features: int
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype)
        hidden = int(self.features * self.expansion)
        y = BaseConv(hidden, 1, 1, name="conv1", **kw)(x, train)
        y = conv_block(self.depthwise)(self.features, 3, 1, name="conv2", **kw)(y, train)
        if self.shortcut and x.shape[-1] == self.features:
            y = y + x
        return y


class ResLayer(nn.Module):
    """Darknet-53 residual block (LeakyReLU 0.1 throughout, as the official one)."""

    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act="lrelu", bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype)
        c = x.shape[-1]
        y = BaseConv(c // 2, 1, 1, name="layer1", **kw)(x, train)
        y = BaseConv(c, 3, 1, name="layer2", **kw)(y, train)
        return x + y


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (max pools 5/9/13, stride 1, -inf padding) between two 1x1 convs."""

    features: int
    kernel_sizes: Sequence[int] = (5, 9, 13)
    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype)
        x = BaseConv(x.shape[-1] // 2, 1, 1, name="conv1", **kw)(x, train)
        pools = [
            nn.max_pool(x, (k, k), strides=(1, 1), padding=((k // 2, k // 2), (k // 2, k // 2)))
            for k in self.kernel_sizes
        ]
        x = jnp.concatenate([x, *pools], axis=-1)
        return BaseConv(self.features, 1, 1, name="conv2", **kw)(x, train)


class CSPLayer(nn.Module):
    """CSP bottleneck with 3 convs (YOLOv5 C3): two 1x1 branches, n bottlenecks on the first."""

    features: int
    n: int = 1
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(act=self.act, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype)
        hidden = int(self.features * self.expansion)
        x1 = BaseConv(hidden, 1, 1, name="conv1", **kw)(x, train)
        x2 = BaseConv(hidden, 1, 1, name="conv2", **kw)(x, train)
        for i in range(self.n):
            x1 = Bottleneck(
                hidden, self.shortcut, 1.0, self.depthwise, name=f"m.{i}", **kw
            )(x1, train)
        return BaseConv(self.features, 1, 1, name="conv3", **kw)(
            jnp.concatenate([x1, x2], axis=-1), train
        )


class Focus(nn.Module):
    """Space-to-depth stem: 2x2 pixel patches into channels, in the official order
    (top-left, bottom-left, top-right, bottom-right), then a conv."""

    features: int
    ksize: int = 1
    stride: int = 1
    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.concatenate(
            [x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        return BaseConv(
            self.features, self.ksize, self.stride, act=self.act, bn_eps=self.bn_eps,
            bn_momentum=self.bn_momentum, dtype=self.dtype, name="conv",
        )(x, train)


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling, [B, H, W, C] -> [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
