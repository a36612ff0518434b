"""Native CPU kernels (XLA FFI custom calls), compiled on first use: BatchNorm + activation and
the depthwise convolution, forward and backward, and the weight gradient of dense convolutions.

`native.cc` is C++ against the XLA FFI headers that ship with jaxlib. The first process that
needs it compiles it with the system C++ compiler (~7 s) into the cache root
(`yolox_jax.home.cache_root("native")`, keyed by the source, the flags, jaxlib's version and the
CPU), and every later process loads that file. Nothing here is required: without a compiler, with
`YOLOX_JAX_NATIVE=0`, on more than one device, or for shapes it does not cover, the model uses
the pure-JAX formulation in kernels.py (same results up to float32 rounding; tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from functools import lru_cache, partial
from pathlib import Path

import jax
import numpy as np

from ..home import cache_root

_SOURCE = Path(__file__).with_name("native.cc")
_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp-simd",
          "-std=c++17", "-shared", "-fPIC")
_ACT = {"silu": 0, "relu": 1, "lrelu": 2, "none": 3}
_FWD, _BWD = "yolox_jax_bn_act_fwd", "yolox_jax_bn_act_bwd"
_DW_FWD, _DW_BWD = "yolox_jax_depthwise_fwd", "yolox_jax_depthwise_bwd"
_WGRAD = "yolox_jax_conv_wgrad"
_SYMBOLS = {_FWD: "YoloxBnActFwd", _BWD: "YoloxBnActBwd", _DW_FWD: "YoloxDwFwd",
            _DW_BWD: "YoloxDwBwd", _WGRAD: "YoloxConvWgrad"}


def _cpu_key() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return f"{platform.machine()} {flags}"


def _library_path(compiler: str) -> Path:
    import jaxlib

    key = hashlib.sha256("\n".join([
        _SOURCE.read_text(), compiler, " ".join(_FLAGS), jaxlib.__version__, _cpu_key(),
    ]).encode()).hexdigest()[:16]
    return cache_root("native", f"kernels-{key}.so")


def _compile(compiler: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: a concurrent process sees no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_LOCK = threading.Lock()  # the trainer traces its multi-scale programs from several threads


def load() -> bool:
    """Compile (once per machine) and register the kernels; False, with one warning saying
    why, where they cannot be built. `YOLOX_JAX_NATIVE=0` turns them off."""
    with _LOCK:
        return _load()


@lru_cache(maxsize=1)
def _load() -> bool:
    if os.environ.get("YOLOX_JAX_NATIVE", "1") == "0":
        return False
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        warnings.warn("yolox_jax: no C++ compiler (set CXX or install g++); the CPU train step "
                      "uses the slower pure-JAX forms", stacklevel=2)
        return False
    try:
        path = _library_path(compiler)
        if not path.exists():
            print(f"yolox_jax: compiling the native CPU kernels into {path} (once)",
                  file=sys.stderr)
            _compile(compiler, path)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in _SYMBOLS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except Exception as e:  # a broken toolchain must not stop training: fall back, say so
        warnings.warn(f"yolox_jax: native CPU kernels unavailable ({str(e).splitlines()[0]}); "
                      "using the pure-JAX forms", stacklevel=2)
        return False
    return True


def usable(*arrays: jax.Array) -> bool:
    """Whether the native kernels serve a call on these operands: float32 on a single CPU
    device (under several devices XLA would replicate a custom call; the pure-JAX forms
    shard)."""
    return (all(a.dtype == np.float32 for a in arrays) and jax.default_backend() == "cpu"
            and jax.device_count() == 1 and load())


def _shapes(x: jax.Array) -> tuple[jax.ShapeDtypeStruct, ...]:
    c = x.shape[-1]
    vec = jax.ShapeDtypeStruct((c,), x.dtype)
    return jax.ShapeDtypeStruct(x.shape, x.dtype), vec, vec


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def bn_act_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
                 act: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """act(BN(x)) over all axes but the last, float32 [..., C] -> (y, mean [C], biased var [C]);
    the contract of kernels._bn_act_train."""
    return tuple(jax.ffi.ffi_call(_FWD, _shapes(x))(
        x, scale, bias, eps=np.float32(eps), act=np.int32(_ACT[act])))


def _fwd(x, scale, bias, eps, act):
    y, mean, var = bn_act_train(x, scale, bias, eps, act)
    return (y, mean, var), (x, mean, var, scale, bias)


def _bwd(eps, act, res, cotangents):
    # As kernels._bn_act_train: the statistics' cotangents are dropped (they feed only the
    # running averages, which nothing differentiates).
    x, mean, var, scale, bias = res
    return tuple(jax.ffi.ffi_call(_BWD, _shapes(x))(
        x, mean, var, scale, bias, cotangents[0], eps=np.float32(eps), act=np.int32(_ACT[act])))


bn_act_train.defvjp(_fwd, _bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise k x k conv, padding (k-1)//2: float32 [B, H, W, C], kernel [k, k, C] ->
    [B, H', W', C]; the contract of kernels._depthwise."""
    k = kernel.shape[0]
    ho, wo = ((n + 2 * ((k - 1) // 2) - k) // stride + 1 for n in x.shape[1:3])
    out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    return jax.ffi.ffi_call(_DW_FWD, out)(x, kernel, stride=np.int32(stride))


def _dw_fwd(x, kernel, stride):
    return depthwise(x, kernel, stride), (x, kernel)


def _dw_bwd(stride, res, g):
    x, kernel = res
    shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape, x.dtype))
    return tuple(jax.ffi.ffi_call(_DW_BWD, shapes)(x, kernel, g, stride=np.int32(stride)))


depthwise.defvjp(_dw_fwd, _dw_bwd)


def conv_weight_grad(x: jax.Array, g: jax.Array, k: int, stride: int) -> jax.Array:
    """Weight gradient of a dense k x k conv, padding (k-1)//2: float32 x [B, H, W, Cin] and
    the output cotangent g [B, H', W', Cout] (Cout a multiple of 16) -> [k, k, Cin, Cout]."""
    out = jax.ShapeDtypeStruct((k, k, x.shape[-1], g.shape[-1]), x.dtype)
    return jax.ffi.ffi_call(_WGRAD, out)(x, g, stride=np.int32(stride))
