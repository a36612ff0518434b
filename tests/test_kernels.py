"""`yolox_jax.models.kernels`: the fast formulations equal the textbook ones, values and gradients.

References are XLA's own convolution / reduce-window and autodiff of the plain BatchNorm
formula, in float64 (`jax_enable_x64` inside a context), so the float32 results are judged
against exact arithmetic rather than against another float32 rounding.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolox_jax.models import kernels, native
from yolox_jax.models.layers import spp_pools


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _ref_conv(x, kernel, stride, groups):
    k = kernel.shape[0]
    pad = (k - 1) // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )


def _native_or_skip() -> None:
    import shutil

    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        pytest.skip("the native CPU kernels need a C++ compiler (none on PATH)")
    assert native.load(), "the native CPU kernels did not build (see the warning above)"


CASES = [
    # (B, H, W, Cin, Cout, k, stride, groups)
    (2, 12, 10, 8, 8, 3, 1, 8),    # depthwise 3x3
    (2, 12, 10, 8, 8, 3, 2, 8),    # depthwise 3x3, stride 2
    (2, 13, 11, 6, 6, 3, 2, 6),    # depthwise, odd sizes (the stride-2 border)
    (3, 9, 9, 4, 4, 5, 1, 4),      # depthwise 5x5
    (2, 7, 5, 6, 10, 1, 1, 1),     # pointwise
    (2, 7, 5, 13, 32, 1, 1, 1),    # pointwise (native weight gradient)
    (2, 8, 8, 6, 10, 3, 2, 1),     # dense 3x3, Cout not a multiple of 16 (XLA's conv in both)
    (2, 9, 7, 14, 48, 3, 1, 1),    # dense 3x3 (native weight gradient: Cin tiles 12 + 2,
                                   # Cout 32 + 16)
    (2, 11, 10, 5, 16, 3, 2, 1),   # dense 3x3, stride 2, odd sizes
    (1, 7, 6, 3, 32, 5, 1, 1),     # dense 5x5
    (2, 1, 1, 4, 16, 3, 1, 1),     # dense 3x3 on a 1x1 map (taps entirely in the padding)
    (1, 2, 1, 3, 16, 5, 2, 1),     # dense 5x5, stride 2, map narrower than the kernel
]


@pytest.mark.parametrize("native_kernels", [False, True], ids=["pure-jax", "native"])
@pytest.mark.parametrize("case", CASES, ids=[f"k{c[5]}s{c[6]}g{c[7]}" for c in CASES])
def test_conv2d_cpu_forms_equal_xla_conv_values_and_gradients(case, native_kernels, monkeypatch):
    """Both CPU forms of the depthwise conv (the native kernel and the pure-JAX taps), the 1x1
    product and the dense conv (XLA's, with the native weight gradient or XLA's) against
    float64 XLA convolutions, values and both gradients."""
    b, h, w, cin, cout, k, stride, groups = case
    if native_kernels:
        _native_or_skip()
    else:
        monkeypatch.setattr(native, "usable", lambda *a: False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
    kernel = rng.normal(size=(k, k, cin // groups, cout)).astype(np.float32)
    probe = rng.normal(size=_ref_conv(x, kernel, stride, groups).shape).astype(np.float32)

    def loss(conv):
        return lambda x, kr: jnp.sum(conv(x, kr) * probe)

    ours = jax.jit(lambda x, kr: kernels.conv2d(x, kr, stride, groups, cpu=True))
    fwd_text = ours.lower(x, kernel).as_text()
    grad_text = jax.jit(jax.grad(loss(ours), (0, 1))).lower(x, kernel).as_text()
    # the path under test is taken
    assert ("yolox_jax_depthwise_fwd" in fwd_text) == (native_kernels and groups > 1)
    assert ("yolox_jax_depthwise_bwd" in grad_text) == (native_kernels and groups > 1)
    dense_native = native_kernels and groups == 1 and cout % 16 == 0
    assert ("yolox_jax_conv_wgrad" in grad_text) == dense_native
    with jax.enable_x64(True):
        x64, k64 = jnp.asarray(x, jnp.float64), jnp.asarray(kernel, jnp.float64)
        want = _ref_conv(x64, k64, stride, groups)
        want_grads = jax.grad(loss(lambda a, kr: _ref_conv(a, kr, stride, groups)), (0, 1))(
            x64, k64)
    assert ours(x, kernel).shape == want.shape
    assert _rel(ours(x, kernel), want) < 1e-6
    grads = jax.jit(jax.grad(loss(ours), (0, 1)))(x, kernel)
    for g, gw in zip(grads, want_grads, strict=True):
        assert g.shape == gw.shape and g.dtype == jnp.float32
        assert _rel(g, gw) < 1e-5


def test_depthwise_per_image_kernel_gradient_path(monkeypatch):
    """Large maps take the kernel gradient chunk by chunk: same result as the batched one."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 16, 16, 8)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 1, 8)).astype(np.float32)
    grads = {}
    for name, threshold in (("batched", 1 << 40), ("per_image", 1), ("chunks", 16 * 16 * 8)):
        monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", threshold)
        f = jax.jit(jax.grad(lambda a, kr: jnp.sum(
            kernels.depthwise_conv(a, kr, 1, native_ok=False) ** 2), 1))
        grads[name] = f(x, kernel)
    assert _rel(grads["per_image"], grads["batched"]) < 1e-6
    assert _rel(grads["chunks"], grads["batched"]) < 1e-6


def _plain_bn(x, scale, bias, eps):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


@pytest.mark.parametrize("cpu", [False, True], ids=["pure-jax", "native"])
@pytest.mark.parametrize("act", ["none", "silu"])
@pytest.mark.parametrize("offset,spread", [(0.0, 1.0), (200.0, 3.0), (0.0, 300.0)],
                         ids=["centred", "large-mean", "large-spread"])
def test_fused_batchnorm_equals_autodiff_of_the_formula(offset, spread, act, cpu):
    """Values, batch statistics and all three gradients, including channels whose mean is far
    from zero (the stem's raw pixels), against float64 autodiff of the two-pass formula: the
    pure-JAX form and the native CPU kernel, without and with the fused activation."""
    if cpu:
        _native_or_skip()
    rng = np.random.default_rng(2)
    x = rng.normal(offset, spread, size=(3, 6, 5, 7)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 7).astype(np.float32)
    bias = rng.normal(size=7).astype(np.float32)
    probe = rng.normal(size=x.shape).astype(np.float32)
    act_fn = jax.nn.silu if act == "silu" else (lambda v: v)

    def plain(x, s, b):
        y, mean, var = _plain_bn(x, s, b, 1e-3)
        return act_fn(y), mean, var

    def ours(x, s, b):
        return kernels.batch_norm_train(x, s, b, 1e-3, jnp.float32, act, cpu=cpu)

    def loss(bn):
        return lambda x, s, b: jnp.sum(bn(x, s, b)[0] * probe)

    with jax.enable_x64(True):
        args64 = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
        want = plain(*args64)
        want_grads = jax.grad(loss(plain), (0, 1, 2))(*args64)
    lowered = jax.jit(ours).lower(x, scale, bias).as_text()
    assert ("yolox_jax_bn_act_fwd" in lowered) == cpu  # the path under test is the one taken
    got = jax.jit(ours)(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 1e-5
    grads = jax.jit(jax.grad(loss(ours), (0, 1, 2)))(x, scale, bias)
    for g, w in zip(grads, want_grads, strict=True):
        assert _rel(g, w) < 1e-4


def test_batchnorm_bfloat16_compute_keeps_float32_statistics():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 4, 3)), jnp.bfloat16)
    y, mean, var = kernels.batch_norm_train(x, jnp.ones(3), jnp.zeros(3), 1e-3, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32


def _pool(x, k):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, 1, 1, 1),
                                 ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))


def test_spp_cascade_equals_direct_pools_values_and_gradients():
    """5 -> 9 -> 13 as cascaded 5x5 pools (SPPF) is the direct 5/9/13 pools exactly, also on maps
    smaller than the window (the -inf padding), and routes the gradient to the same elements."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)

    def direct(x, sizes=(5, 9, 13)):
        return [_pool(x, k) for k in sizes]

    probe = [rng.normal(size=x.shape).astype(np.float32) for _ in range(3)]

    def loss(pools):
        return lambda x: sum(jnp.sum(p * w) for p, w in zip(pools(x), probe, strict=True))

    g_direct = jax.grad(loss(direct))(x)
    for cpu in (False, True):  # reduce-window pools, and the shifted maxima of the CPU kernels
        for a, b in zip(spp_pools(x, (5, 9, 13), cpu), direct(x), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        g_cascade = jax.jit(jax.grad(loss(lambda x, cpu=cpu: spp_pools(x, (5, 9, 13), cpu))))(x)
        np.testing.assert_allclose(np.asarray(g_cascade), np.asarray(g_direct), rtol=1e-6,
                                   atol=1e-6)
        # Sizes that are not a cascade of the first are pooled directly.
        for a, b in zip(spp_pools(x, (3, 7), cpu), direct(x, (3, 7)), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_settings_kernels_value_is_checked():
    from yolox_jax.models.layers import Settings

    with pytest.raises(ValueError, match="kernels must be 'auto', 'cpu' or 'xla', got 'gpu'"):
        Settings(kernels="gpu").cpu_kernels()
