"""The YOLOX building blocks (official `yolox/models/network_blocks.py`), NHWC.

Submodule names mirror the official PyTorch module paths (`conv`, `bn`, `m.0`, ...), so that a
Flax parameter path joined with '.' *is* the official state-dict key (see `weights/convert.py`).

The numerics live in `models/kernels.py` (BatchNorm with a fused backward, depthwise and 1x1
convolutions in the forms XLA's CPU backend runs fast); this file is only the architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from yolox_jax.models import kernels

Dtype = Any

# torch's default Conv2d init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """torch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every block of one model shares: activation, BN constants, compute dtype, kernels.

    `kernels`: "auto" picks the CPU formulations (`kernels.py`) on a CPU backend and XLA's
    convolutions elsewhere; "cpu" / "xla" force one (same parameters and results either way;
    "xla" is what the ONNX exporter traces, one Conv node per convolution).
    """

    act: str = "silu"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03  # torch convention: new = (1 - m) * old + m * batch
    dtype: Dtype = jnp.float32
    kernels: str = "auto"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def cpu_kernels(self) -> bool:
        if self.kernels not in ("auto", "cpu", "xla"):
            raise ValueError(f"kernels must be 'auto', 'cpu' or 'xla', got {self.kernels!r}")
        if self.kernels == "auto":
            return jax.default_backend() == "cpu"
        return self.kernels == "cpu"


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
    """BatchNorm2d with torch semantics over NHWC, then `act`.

    Normalises with the biased batch variance but stores the *unbiased* one in the running
    variance (torch does; Flax's BatchNorm stores the biased one), statistics in float32
    whatever the compute dtype. Under `jax.jit` with a batch-sharded input the mean is taken over
    the global batch (synchronised BN).
    """

    s: Settings = Settings()
    act: str = "none"  # the activation that follows, fused into the training backward

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if use_running_average:
            y = kernels.batch_norm_inference(x, ra_mean.value, ra_var.value, scale, bias,
                                             self.s.bn_eps)
            y = y.astype(self.s.dtype)
            return y if self.act == "none" else activation(self.act)(y)
        y, mean, var = kernels.batch_norm_train(x, scale, bias, self.s.bn_eps, self.s.dtype,
                                                self.act, cpu=self.s.cpu_kernels())
        if not self.is_initializing():
            n = int(np.prod(x.shape[:-1]))
            unbiased = var * (n / max(n - 1, 1))
            m = self.s.bn_momentum
            ra_mean.value = (1 - m) * ra_mean.value + m * mean
            ra_var.value = (1 - m) * ra_var.value + m * unbiased
        return y


class Conv(nn.Module):
    """Conv2d, NHWC, kernel `[k, k, Cin / groups, features]` (HWIO, as `nn.Conv`), symmetric
    padding (k-1)//2, optional bias. One module for every convolution of the model; it picks
    the formulation (`kernels.conv2d`), never the parameters."""

    features: int
    ksize: int = 1
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    bias_init: Any = None
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        if cin % self.groups:
            raise ValueError(f"{cin} input channels are not divisible by groups={self.groups}")
        kernel = self.param("kernel", torch_conv_kernel_init,
                            (self.ksize, self.ksize, cin // self.groups, self.features),
                            jnp.float32)
        y = kernels.conv2d(x.astype(self.s.dtype), kernel.astype(self.s.dtype), self.stride,
                           self.groups, cpu=self.s.cpu_kernels())
        if self.use_bias:
            bias = self.param("bias", self.bias_init or nn.initializers.zeros, (self.features,),
                              jnp.float32)
            y = y + bias.astype(self.s.dtype)
        return y


class BaseConv(nn.Module):
    """Conv2d (symmetric padding (k-1)//2, no bias) -> BatchNorm -> activation.

    With BatchNorm-folded variables (`export.fold_batchnorm`: `conv` has a `bias`, no `bn`, no
    batch_stats) the same module computes conv + bias -> activation (inference only).
    """

    features: int
    ksize: int
    stride: int = 1
    groups: int = 1
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        folded = self._folded_bias()
        x = Conv(self.features, self.ksize, self.stride, self.groups,
                 use_bias=folded, s=self.s, name="conv")(x)
        if folded:
            if train:
                raise ValueError("BatchNorm-folded variables are for inference only (train=False)")
            return activation(self.s.act)(x)
        return BatchNorm(self.s, self.s.act, name="bn")(x, use_running_average=not train)

    def _folded_bias(self) -> bool:
        """Whether the variables are BatchNorm-folded (a conv bias and no BN)."""
        if self.is_initializing():
            return False
        params = self.variables.get("params", {})
        return "bn" not in params and "bias" in params.get("conv", {})


class DWConv(nn.Module):
    """Depthwise conv (`dconv`) followed by a pointwise conv (`pconv`)."""

    features: int
    ksize: int
    stride: int = 1
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        x = BaseConv(c, self.ksize, self.stride, groups=c, s=self.s, name="dconv")(x, train)
        return BaseConv(self.features, 1, 1, s=self.s, name="pconv")(x, train)


def conv_block(depthwise: bool):
    return DWConv if depthwise else BaseConv


class Bottleneck(nn.Module):
    features: int
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(self.features * self.expansion)
        y = BaseConv(hidden, 1, 1, s=self.s, name="conv1")(x, train)
        y = conv_block(self.depthwise)(self.features, 3, 1, s=self.s, name="conv2")(y, train)
        if self.shortcut and x.shape[-1] == self.features:
            y = y + x
        return y


class ResLayer(nn.Module):
    """Darknet-53 residual block (LeakyReLU 0.1 throughout, as the official one)."""

    s: Settings = Settings(act="lrelu")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        y = BaseConv(c // 2, 1, 1, s=self.s, name="layer1")(x, train)
        y = BaseConv(c, 3, 1, s=self.s, name="layer2")(y, train)
        return x + y


def max_pool_same(x: jax.Array, k: int, cpu: bool = False) -> jax.Array:
    """k x k max pool, stride 1, -inf padding k//2 (the official SPP pool), [B, H, W, C]."""
    if cpu:
        return kernels.max_pool(x, k)
    return nn.max_pool(x, window_shape=(k, k), strides=(1, 1), padding="SAME")


def spp_pools(x: jax.Array, kernel_sizes: Sequence[int], cpu: bool = False) -> list[jax.Array]:
    """The SPP max pools of `x`. Pools of sizes k, 2k-1, 3k-2, ... are computed as a cascade of
    k x k pools (SPPF): with stride 1 and -inf padding a max over a (2k-1) window *is* the max of
    k-window maxes, so the result is identical and the backward pass is much cheaper."""
    pools, prev, k0 = [], x, kernel_sizes[0]
    for i, k in enumerate(kernel_sizes):
        if i > 0 and k == kernel_sizes[i - 1] + k0 - 1:
            prev = max_pool_same(prev, k0, cpu)
        else:
            prev = max_pool_same(x, k, cpu)
        pools.append(prev)
    return pools


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (max pools 5/9/13, stride 1, -inf padding) between two 1x1 convs."""

    features: int
    kernel_sizes: Sequence[int] = (5, 9, 13)
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = BaseConv(x.shape[-1] // 2, 1, 1, s=self.s, name="conv1")(x, train)
        x = jnp.concatenate([x, *spp_pools(x, self.kernel_sizes, self.s.cpu_kernels())], axis=-1)
        return BaseConv(self.features, 1, 1, s=self.s, name="conv2")(x, train)


class CSPLayer(nn.Module):
    """CSP bottleneck with 3 convs (YOLOv5 C3): two 1x1 branches, n bottlenecks on the first."""

    features: int
    n: int = 1
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(self.features * self.expansion)
        x1 = BaseConv(hidden, 1, 1, s=self.s, name="conv1")(x, train)
        x2 = BaseConv(hidden, 1, 1, s=self.s, name="conv2")(x, train)
        for i in range(self.n):
            x1 = Bottleneck(hidden, self.shortcut, 1.0, self.depthwise, s=self.s,
                            name=f"m.{i}")(x1, train)
        return BaseConv(self.features, 1, 1, s=self.s, name="conv3")(
            jnp.concatenate([x1, x2], axis=-1), train
        )


class Focus(nn.Module):
    """Space-to-depth stem: 2x2 pixel patches into channels, in the official order
    (top-left, bottom-left, top-right, bottom-right), then a conv."""

    features: int
    ksize: int = 1
    stride: int = 1
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.concatenate(
            [x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        return BaseConv(self.features, self.ksize, self.stride, s=self.s, name="conv")(x, train)


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling, [B, H, W, C] -> [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
