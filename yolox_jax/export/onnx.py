"""A small jaxpr -> ONNX converter for the YOLOX models, with layout propagation.

`to_onnx(fn, example)` traces `fn` (NHWC in, any-rank out) with `jax.make_jaxpr` and emits one
ONNX node per primitive of the (inlined) jaxpr, for exactly the primitives the YOLOX models produce;
an unknown primitive is an `UnsupportedPrimitiveError` naming it.

Layout: every value carries a permutation `perm` with physical = transpose(logical, perm). The
graph input `[N, 3, H, W]` is the NHWC image with perm (0, 3, 1, 2); each convolution produces its
output in the layout its `dimension_numbers` ask for (NCHW), so the whole network runs NCHW
without a Transpose per layer: axis-wise ops (concatenate, slice, pad, max-pool, reshape,
broadcast) are rewritten on the physical axes. A reshape that cannot be expressed on the physical
layout falls back to one Transpose to the logical layout. Outputs are transposed back to their
logical layout (the head's [N, A, 5 + C] costs one Transpose, as in the official export).

Constants: the variables are closed over, so every weight-only subgraph (kernel casts, BatchNorm
arithmetic, the anchor grid) is evaluated at export time and stored as an initializer. Constants
that are equal along an axis are stored with that axis of size 1 (ONNX broadcasting). Then two
peepholes: Conv + Add(per-channel constant) -> Conv with bias; where(x >= 0, x, a * x) -> LeakyRelu.
A broadcast + reshape that repeats a tensor along a spatial axis (`upsample2x`) becomes a nearest
Resize.

Batch: the trace runs at batch 1 and the graph never depends on the batch size (reshapes copy the
batch dim, constants broadcast), so the same graph serves a static batch or a symbolic one.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.extend import core as jax_core

MIN_OPSET = 11
MAX_OPSET = 21


class UnsupportedPrimitiveError(NotImplementedError):
    """The traced function uses a JAX primitive (or form of one) this converter does not emit."""


class ExportError(ValueError):
    """The traced function cannot be exported batch-agnostically (or another export limit)."""


@dataclass
class _Val:
    """A jaxpr value: a constant (logical layout) or an ONNX tensor in physical layout `perm`."""

    shape: tuple[int, ...]  # logical
    dtype: np.dtype
    name: str | None = None
    perm: tuple[int, ...] = ()
    const: np.ndarray | None = None
    # set by broadcast_in_dim when the value is `src` with a new physical axis k + 1 of size r:
    # a reshape merging axes k and k + 1 then is a nearest-neighbour repeat (one Resize node)
    repeat: tuple[str, int, int] | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None


_ONNX_DTYPES = {
    np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6,
    np.dtype(np.int64): 7, np.dtype(np.bool_): 9, np.dtype(np.float16): 10,
    np.dtype(np.float64): 11,
}

_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
           "pow": "Pow"}
_UNARY = {"neg": "Neg", "exp": "Exp", "logistic": "Sigmoid", "tanh": "Tanh", "sqrt": "Sqrt",
          "log": "Log", "abs": "Abs", "floor": "Floor", "ceil": "Ceil"}
_COMPARE = {"gt": "Greater", "lt": "Less", "eq": "Equal"}
_INLINE = ("jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
           "custom_vjp_call", "custom_vjp_call_jaxpr")


def _np_broadcast_in_dim(x: np.ndarray, shape: Sequence[int],
                         broadcast_dimensions: Sequence[int], **_: Any) -> np.ndarray:
    expanded = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        expanded[d] = x.shape[i]
    return np.broadcast_to(x.reshape(expanded), tuple(shape))


# Weight-only ops folded in numpy (exact: layout ops and casts; the rest go through jax.bind).
_NUMPY_FOLD: dict[str, Callable[..., np.ndarray]] = {
    "broadcast_in_dim": _np_broadcast_in_dim,
    "reshape": lambda x, new_sizes, **_: x.reshape(tuple(new_sizes)),
    "convert_element_type": lambda x, new_dtype, **_: x.astype(np.dtype(new_dtype)),
    "transpose": lambda x, permutation, **_: np.transpose(x, permutation),
}


def _inv(perm: Sequence[int]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


def _compact(c: np.ndarray) -> np.ndarray:
    """The constant with every axis along which it is constant reduced to size 1."""
    for ax in range(c.ndim):
        if c.shape[ax] > 1:
            first = np.take(c, [0], axis=ax)
            if np.array_equal(np.broadcast_to(first, c.shape), c):
                c = first
    return c


def _sub_jaxpr(eqn: Any) -> tuple[Any, Sequence[Any]]:
    """(jaxpr, consts) of a call-like equation to inline."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is None:
            continue
        if hasattr(j, "consts") and hasattr(j, "jaxpr"):
            return j.jaxpr, j.consts
        return j, ()
    raise UnsupportedPrimitiveError(f"cannot inline primitive {eqn.primitive.name!r}")


class _Builder:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._n = itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._n)}"

    def const(self, arr: np.ndarray, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        return self.const(np.asarray(values, np.int64), hint)

    def node(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(hint or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


class _Converter:
    def __init__(self, opset: int) -> None:
        self.b = _Builder(opset)
        self.opset = opset

    # ------------------------------------------------------------------ values
    def phys_name(self, v: _Val, perm: Sequence[int] | None = None) -> str:
        """ONNX name of `v` in layout `perm` (constants are transposed at export time, tensors
        get a Transpose node)."""
        perm = tuple(perm) if perm is not None else (v.perm if not v.is_const else
                                                     tuple(range(len(v.shape))))
        if v.is_const:
            c = np.transpose(v.const, perm) if v.const.ndim else v.const
            return self.b.const(_compact(c) if c.ndim else c)
        if tuple(perm) == v.perm:
            return v.name
        # physical now: logical[v.perm]; wanted: logical[perm] -> take axes v.perm^-1[perm]
        inv = _inv(v.perm)
        return self.b.node("Transpose", [v.name], perm=[inv[p] for p in perm])

    def tensor(self, shape: Sequence[int], dtype: Any, name: str, perm: Sequence[int]) -> _Val:
        return _Val(tuple(int(s) for s in shape), np.dtype(dtype), name, tuple(perm))

    def layout_of(self, vals: Sequence[_Val]) -> tuple[int, ...]:
        """The layout shared by the tensor operands (first tensor's; constants follow)."""
        for v in vals:
            if not v.is_const:
                return v.perm
        raise AssertionError("no tensor operand")

    # ------------------------------------------------------------------ traversal
    def run(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[_Val]) -> list[_Val]:
        env: dict[Any, _Val] = {}

        def read(var: Any) -> _Val:
            if isinstance(var, jax_core.Literal):
                a = np.asarray(var.val)
                return _Val(a.shape, a.dtype, const=a)
            return env[var]

        for var, c in zip(jaxpr.constvars, consts, strict=True):
            a = np.asarray(c)
            env[var] = _Val(a.shape, a.dtype, const=a)
        for var, a in zip(jaxpr.invars, args, strict=True):
            env[var] = a
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for var, o in zip(eqn.outvars, outs, strict=True):
                env[var] = o
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[_Val]) -> list[_Val]:
        name = eqn.primitive.name
        if name in _INLINE:
            sub, consts = _sub_jaxpr(eqn)
            return self.run(sub, consts, ins)
        if all(v.is_const for v in ins):  # constant folding at export time
            fast = _NUMPY_FOLD.get(name)
            if fast is not None and not eqn.params.get("dimensions"):
                a = np.asarray(fast(*[v.const for v in ins], **eqn.params))
                return [_Val(a.shape, a.dtype, const=a)]
            outs = eqn.primitive.bind(*[v.const for v in ins], **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            return [_Val(np.shape(o), np.asarray(o).dtype, const=np.asarray(o)) for o in outs]
        handler = getattr(self, f"op_{name}", None)
        if handler is None:
            if name in _BINARY:
                return [self.elementwise(_BINARY[name], eqn, ins)]
            if name in _UNARY:
                return [self.elementwise(_UNARY[name], eqn, ins)]
            raise UnsupportedPrimitiveError(
                f"ONNX export: JAX primitive {name!r} is not supported by yolox_jax.export.onnx "
                f"(params {sorted(eqn.params)})")
        return [handler(eqn, ins)]

    # ------------------------------------------------------------------ elementwise
    def elementwise(self, op: str, eqn: Any, ins: list[_Val], **attrs: Any) -> _Val:
        perm = self.layout_of(ins)
        names = [self.phys_name(v, perm) for v in ins]
        aval = eqn.outvars[0].aval
        return self.tensor(aval.shape, aval.dtype, self.b.node(op, names, **attrs), perm)

    def op_rsqrt(self, eqn: Any, ins: list[_Val]) -> _Val:
        v = self.elementwise("Sqrt", eqn, ins)
        return self.tensor(v.shape, v.dtype, self.b.node("Reciprocal", [v.name]), v.perm)

    def op_integer_pow(self, eqn: Any, ins: list[_Val]) -> _Val:
        y = int(eqn.params["y"])
        x = ins[0]
        if y == 2:
            return self.elementwise("Mul", eqn, [x, x])
        c = np.asarray(float(y), x.dtype)
        return self.elementwise("Pow", eqn, [x, _Val((), c.dtype, const=c)])

    def op_ge(self, eqn: Any, ins: list[_Val]) -> _Val:
        if self.opset >= 12:
            return self.elementwise("GreaterOrEqual", eqn, ins)
        v = self.elementwise("Less", eqn, ins)
        return self.tensor(v.shape, v.dtype, self.b.node("Not", [v.name]), v.perm)

    def op_le(self, eqn: Any, ins: list[_Val]) -> _Val:
        if self.opset >= 12:
            return self.elementwise("LessOrEqual", eqn, ins)
        v = self.elementwise("Greater", eqn, ins)
        return self.tensor(v.shape, v.dtype, self.b.node("Not", [v.name]), v.perm)

    def op_gt(self, eqn: Any, ins: list[_Val]) -> _Val:
        return self.elementwise("Greater", eqn, ins)

    def op_lt(self, eqn: Any, ins: list[_Val]) -> _Val:
        return self.elementwise("Less", eqn, ins)

    def op_select_n(self, eqn: Any, ins: list[_Val]) -> _Val:
        if len(ins) != 3:
            raise UnsupportedPrimitiveError("ONNX export: select_n with more than 2 cases")
        pred, case0, case1 = ins
        if pred.dtype != np.bool_:
            raise UnsupportedPrimitiveError("ONNX export: select_n with an integer predicate")
        return self.elementwise("Where", eqn, [pred, case1, case0])

    def op_convert_element_type(self, eqn: Any, ins: list[_Val]) -> _Val:
        x = ins[0]
        to = np.dtype(eqn.params["new_dtype"])
        if to == x.dtype:
            return x
        if to not in _ONNX_DTYPES:
            raise UnsupportedPrimitiveError(f"ONNX export: convert_element_type to {to}")
        return self.tensor(x.shape, to, self.b.node("Cast", [x.name], to=_ONNX_DTYPES[to]), x.perm)

    def op_copy(self, eqn: Any, ins: list[_Val]) -> _Val:
        return ins[0]

    op_copy_p = op_copy
    op_optimization_barrier = op_copy

    # ------------------------------------------------------------------ layout-aware ops
    def op_conv_general_dilated(self, eqn: Any, ins: list[_Val]) -> _Val:
        x, w = ins
        p = eqn.params
        if not w.is_const:
            raise UnsupportedPrimitiveError("ONNX export: convolution with a non-constant kernel")
        if x.is_const:
            raise UnsupportedPrimitiveError("ONNX export: convolution of a constant input")
        if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
            raise UnsupportedPrimitiveError(
                "ONNX export: conv_general_dilated with lhs_dilation or batch_group_count")
        dn = p["dimension_numbers"]
        lhs, rhs, out = tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)
        kernel = np.transpose(w.const, rhs)  # -> [O, I/g, kh, kw]
        pads = [int(lo) for lo, _ in p["padding"]] + [int(hi) for _, hi in p["padding"]]
        y = self.b.node(
            "Conv", [self.phys_name(x, lhs), self.b.const(kernel.astype(np.float32), "kernel")],
            kernel_shape=list(kernel.shape[2:]), strides=[int(s) for s in p["window_strides"]],
            pads=pads, dilations=[int(d) for d in p["rhs_dilation"]],
            group=int(p["feature_group_count"]),
        )
        aval = eqn.outvars[0].aval
        return self.tensor(aval.shape, aval.dtype, y, out)

    def op_reduce_window_max(self, eqn: Any, ins: list[_Val]) -> _Val:
        (x,) = ins
        p = eqn.params
        if any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"])):
            raise UnsupportedPrimitiveError("ONNX export: dilated reduce_window_max")
        perm = x.perm
        win = [p["window_dimensions"][a] for a in perm]
        strides = [p["window_strides"][a] for a in perm]
        pad = [p["padding"][a] for a in perm]
        if win[:2] != [1, 1] or strides[:2] != [1, 1] or any(pad[i] != (0, 0) for i in (0, 1)):
            raise UnsupportedPrimitiveError(
                "ONNX export: reduce_window_max over the batch or channel axis")
        y = self.b.node(
            "MaxPool", [x.name], kernel_shape=win[2:], strides=strides[2:],
            pads=[int(lo) for lo, _ in pad[2:]] + [int(hi) for _, hi in pad[2:]],
        )
        aval = eqn.outvars[0].aval
        return self.tensor(aval.shape, aval.dtype, y, perm)

    def op_concatenate(self, eqn: Any, ins: list[_Val]) -> _Val:
        d = int(eqn.params["dimension"])
        perm = self.layout_of(ins)
        if d == 0:
            raise ExportError("ONNX export: concatenation along the batch axis")
        for v in ins:
            if v.is_const and v.shape and v.shape[0] == 1:
                raise ExportError("ONNX export: a constant concatenated with batch tensors")
        names = [self.phys_name(v, perm) for v in ins]
        aval = eqn.outvars[0].aval
        y = self.b.node("Concat", names, axis=perm.index(d))
        return self.tensor(aval.shape, aval.dtype, y, perm)

    def op_slice(self, eqn: Any, ins: list[_Val]) -> _Val:
        (x,) = ins
        p = eqn.params
        strides = p["strides"] or (1,) * len(x.shape)
        axes, starts, ends, steps = [], [], [], []
        for i, a in enumerate(x.perm):
            s, e, st = int(p["start_indices"][a]), int(p["limit_indices"][a]), int(strides[a])
            if (s, e, st) == (0, x.shape[a], 1):
                continue
            if i == 0:
                raise ExportError("ONNX export: slicing along the batch axis")
            axes.append(i)
            starts.append(s)
            ends.append(e)
            steps.append(st)
        aval = eqn.outvars[0].aval
        if not axes:
            return x
        y = self.b.node("Slice", [x.name, self.b.ints(starts, "starts"), self.b.ints(ends, "ends"),
                                  self.b.ints(axes, "axes"), self.b.ints(steps, "steps")])
        return self.tensor(aval.shape, aval.dtype, y, x.perm)

    def op_pad(self, eqn: Any, ins: list[_Val]) -> _Val:
        x, value = ins
        cfg = eqn.params["padding_config"]
        if not value.is_const:
            raise UnsupportedPrimitiveError("ONNX export: pad with a non-constant value")
        if any(int(interior) != 0 for _, _, interior in cfg):
            raise UnsupportedPrimitiveError("ONNX export: interior padding")
        phys = [cfg[a] for a in x.perm]
        if phys[0][:2] != (0, 0):
            raise ExportError("ONNX export: padding the batch axis")
        pads = [int(lo) for lo, _, _ in phys] + [int(hi) for _, hi, _ in phys]
        if min(pads) < 0:
            raise UnsupportedPrimitiveError("ONNX export: negative padding")
        y = self.b.node("Pad", [x.name, self.b.ints(pads, "pads"),
                                self.b.const(np.asarray(value.const, x.dtype), "pad_value")],
                        mode="constant")
        aval = eqn.outvars[0].aval
        return self.tensor(aval.shape, aval.dtype, y, x.perm)

    def op_transpose(self, eqn: Any, ins: list[_Val]) -> _Val:
        (x,) = ins
        inv = _inv(eqn.params["permutation"])
        aval = eqn.outvars[0].aval
        return self.tensor(aval.shape, aval.dtype, x.name, tuple(inv[p] for p in x.perm))

    def _reshape_to(self, x: _Val, new_shape: Sequence[int], dtype: Any) -> _Val:
        """Reshape on the physical layout when the row-major groups allow it, else via one
        Transpose to the logical layout. The batch axis (logical and physical 0) is copied."""
        new_shape = tuple(int(s) for s in new_shape)
        if not x.shape or not new_shape or new_shape[0] != x.shape[0] or x.perm[0] != 0:
            raise ExportError(f"ONNX export: reshape {x.shape} -> {new_shape} changes the batch "
                              "axis")
        out_perm = _reshape_layout(x.shape, new_shape, x.perm)
        if x.repeat is not None and out_perm is not None:
            src_name, k, r = x.repeat
            bphys = [x.shape[a] for a in x.perm]
            src_phys = bphys[:k + 1] + bphys[k + 2:]
            want = list(src_phys)
            want[k] *= r
            if [new_shape[a] for a in out_perm] == want:
                scales = np.ones(len(src_phys), np.float32)
                scales[k] = r
                y = self.b.node(
                    "Resize", [src_name, self.b.const(np.zeros(0, np.float32), "roi"),
                               self.b.const(scales, "scales")],
                    mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")
                return self.tensor(new_shape, dtype, y, out_perm)
        src = x.name
        if out_perm is None:  # not expressible physically: materialise the logical layout
            src = self.phys_name(x, tuple(range(len(x.shape))))
            out_perm = tuple(range(len(new_shape)))
        phys_shape = [new_shape[a] for a in out_perm]
        y = self.b.node("Reshape", [src, self.b.ints([0, *phys_shape[1:]])])
        return self.tensor(new_shape, dtype, y, out_perm)

    def op_reshape(self, eqn: Any, ins: list[_Val]) -> _Val:
        x = ins[0]
        if eqn.params.get("dimensions") not in (None, ()):
            raise UnsupportedPrimitiveError("ONNX export: reshape with dimensions")
        aval = eqn.outvars[0].aval
        return self._reshape_to(x, aval.shape, aval.dtype)

    def op_squeeze(self, eqn: Any, ins: list[_Val]) -> _Val:
        aval = eqn.outvars[0].aval
        return self._reshape_to(ins[0], aval.shape, aval.dtype)

    op_expand_dims = op_squeeze

    def op_broadcast_in_dim(self, eqn: Any, ins: list[_Val]) -> _Val:
        x = ins[0]
        shape = tuple(int(s) for s in eqn.params["shape"])
        bdims = tuple(int(d) for d in eqn.params["broadcast_dimensions"])
        if not x.shape or bdims[0] != 0 or shape[0] != x.shape[0] or x.perm[0] != 0:
            raise ExportError("ONNX export: broadcast_in_dim that changes the batch axis")
        order = [bdims[a] for a in x.perm]  # physical order of the operand's axes, as out axes
        for k in range(len(shape)):
            if k not in bdims:
                order.insert(order.index(k - 1) + 1, k)
        perm = tuple(order)
        src = x.name
        mid = [1] * len(shape)
        for a in x.perm:
            mid[perm.index(bdims[a])] = x.shape[a]
        if len(shape) != len(x.shape):
            src = self.b.node("Reshape", [src, self.b.ints([0, *mid[1:]])])
        full = [shape[a] for a in perm]
        if full != mid:
            src = self.b.node("Expand", [src, self.b.ints([1, *full[1:]])])
        out = self.tensor(shape, eqn.outvars[0].aval.dtype, src, perm)
        new_axes = [i for i, a in enumerate(perm) if a not in bdims]
        grown = [i for i in range(len(full)) if full[i] != mid[i]]
        if len(new_axes) == 1 and grown == new_axes and new_axes[0] >= 2:
            out.repeat = (x.name, new_axes[0] - 1, full[new_axes[0]])
        return out


def _reshape_layout(
    in_shape: Sequence[int], out_shape: Sequence[int], perm: Sequence[int]
) -> tuple[int, ...] | None:
    """Layout of reshape(in_shape -> out_shape) computed as a reshape of the physical tensor
    transpose(x, perm), or None if the row-major groups of axes are not contiguous and ordered
    in the physical layout. Size-1 axes are placed freely."""
    a = [i for i, s in enumerate(in_shape) if s != 1]
    b = [j for j, s in enumerate(out_shape) if s != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i >= len(a) or j >= len(b):
            return None
        gi, gj = [a[i]], [b[j]]
        pa, pb = in_shape[a[i]], out_shape[b[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    return None
                gi.append(a[i])
                pa *= in_shape[a[i]]
                i += 1
            else:
                if j >= len(b):
                    return None
                gj.append(b[j])
                pb *= out_shape[b[j]]
                j += 1
        groups.append((gi, gj))
    group_of = {ax: g for g, (gi, _) in enumerate(groups) for ax in gi}
    phys = [ax for ax in perm if in_shape[ax] != 1]
    order: list[int] = []
    pos = 0
    while pos < len(phys):
        g = group_of[phys[pos]]
        gi = groups[g][0]
        if phys[pos:pos + len(gi)] != gi:
            return None
        order.append(g)
        pos += len(gi)
    out: list[int] = [ax for g in order for ax in groups[g][1]]
    # keep the batch axis first, then place size-1 output axes after their logical predecessor
    ones = [k for k, s in enumerate(out_shape) if s == 1]
    for k in ones:
        if k == 0:
            out.insert(0, 0)
        else:
            prev = k - 1
            out.insert(out.index(prev) + 1 if prev in out else len(out), k)
    if out[0] != 0:
        return None
    return tuple(out)


# ---------------------------------------------------------------------- graph passes


def _fuse(nodes: list[Any], initializers: list[Any], outputs: Sequence[str]) -> list[Any]:
    """Peepholes: Conv + Add(per-channel constant) -> biased Conv; Where(x >= 0, x, x * a) ->
    LeakyRelu(a) (x >= 0 is Not(Less) below opset 12); Resize(Resize(x)) -> one Resize; then
    drop unused nodes and initializers."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in initializers}
    producer = {o: n for n in nodes for o in n.output}
    uses = Counter(i for n in nodes for i in n.input) + Counter(outputs)
    dead: set[int] = set()

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    for n in nodes:
        if n.op_type == "Add" and len(n.input) == 2:
            for xi, ci in ((0, 1), (1, 0)):
                conv = producer.get(n.input[xi])
                c = const(n.input[ci])
                if conv is None or conv.op_type != "Conv" or len(conv.input) != 2 or c is None:
                    continue
                if uses[n.input[xi]] != 1:
                    continue
                cout = numpy_helper.to_array(inits[conv.input[1]]).shape[0]
                if c.ndim != 4 or c.shape[0] != 1 or c.shape[2:] != (1, 1) or c.shape[1] not in (
                        1, cout):
                    continue
                bias = np.broadcast_to(c.reshape(-1), (cout,)).astype(np.float32)
                bname = n.name + "_bias"
                initializers.append(numpy_helper.from_array(bias, bname))
                conv.input.append(bname)
                conv.output[0] = n.output[0]
                dead.add(id(n))
                break
    nodes = [n for n in nodes if id(n) not in dead]
    producer = {o: n for n in nodes for o in n.output}
    uses = Counter(i for n in nodes for i in n.input) + Counter(outputs)
    out_nodes = []
    for n in nodes:
        if n.op_type == "Where":
            cond, a, b = n.input
            ge = producer.get(cond)
            if ge is not None and ge.op_type == "Not" and uses[cond] == 1:  # opset 11: Not(Less)
                less = producer.get(ge.input[0])
                if less is not None and less.op_type == "Less" and uses[ge.input[0]] == 1:
                    ge = helper.make_node("GreaterOrEqual", list(less.input), list(ge.output))
            mul = producer.get(b)
            zero = const(ge.input[1]) if ge is not None and len(ge.input) == 2 else None
            if (ge is not None and ge.op_type == "GreaterOrEqual" and ge.input[0] == a
                    and zero is not None and zero.size == 1 and float(zero.reshape(-1)[0]) == 0.0
                    and mul is not None and mul.op_type == "Mul" and a in mul.input
                    and uses[cond] == 1 and uses[b] == 1):
                alpha = const(mul.input[1] if mul.input[0] == a else mul.input[0])
                if alpha is not None and alpha.size == 1:
                    out_nodes.append(helper.make_node(
                        "LeakyRelu", [a], list(n.output), name=n.name,
                        alpha=float(alpha.reshape(-1)[0])))
                    continue
        out_nodes.append(n)
    nodes = _live(out_nodes, outputs)
    producer = {o: n for n in nodes for o in n.output}
    uses = Counter(i for n in nodes for i in n.input) + Counter(outputs)
    for n in nodes:  # Resize(Resize(x, s1), s2) -> Resize(x, s1 * s2) (nearest, integer scales)
        inner = producer.get(n.input[0]) if n.op_type == "Resize" else None
        if (inner is not None and inner.op_type == "Resize" and uses[n.input[0]] == 1
                and inner.attribute == n.attribute and len(inner.input) == len(n.input) == 3):
            s1, s2 = const(inner.input[2]), const(n.input[2])
            if s1 is not None and s2 is not None:
                name = n.name + "_scales"
                initializers.append(numpy_helper.from_array((s1 * s2).astype(np.float32), name))
                n.input[0], n.input[2] = inner.input[0], name
                inits[name] = initializers[-1]
    nodes = _live(nodes, outputs)
    live = {i for n in nodes for i in n.input}
    initializers[:] = [t for t in initializers if t.name in live]
    return nodes


def _live(nodes: list[Any], outputs: Sequence[str]) -> list[Any]:
    """The nodes the outputs depend on (dead-code elimination), in order."""
    live = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    keep.reverse()
    return keep


# ---------------------------------------------------------------------- entry point


def to_onnx(
    fn: Callable[[jax.Array], Any],
    input_hw: tuple[int, int],
    *,
    input_name: str = "images",
    output_names: Sequence[str] = ("output",),
    batch: int | str = 1,
    opset: int = MIN_OPSET,
    input_layout: str = "NCHW",
    metadata: dict[str, str] | None = None,
    doc: str = "",
) -> Any:
    """Trace `fn(images [1, H, W, 3] float32 NHWC) -> array(s)` and return an `onnx.ModelProto`.

    The ONNX input is `input_name` [batch, 3, H, W] (input_layout "NCHW", the official interface)
    or [batch, H, W, 3] ("NHWC"); `batch` an int (static) or a name (symbolic, e.g. "batch").
    Outputs keep their logical (JAX) layout, with `batch` as their first dim.
    """
    from onnx import TensorProto, helper

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ValueError(f"unsupported ONNX opset {opset}: expected {MIN_OPSET}..{MAX_OPSET}")
    h, w = int(input_hw[0]), int(input_hw[1])
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((1, h, w, 3), np.float32))
    conv = _Converter(int(opset))
    in_perm = (0, 3, 1, 2) if input_layout == "NCHW" else (0, 1, 2, 3)
    x = _Val((1, h, w, 3), np.dtype(np.float32), input_name, in_perm)
    outs = conv.run(closed.jaxpr, closed.consts, [x])
    if len(outs) != len(output_names):
        raise ExportError(f"the traced function returns {len(outs)} arrays, but "
                          f"{len(output_names)} output names were given")
    out_infos = []
    for v, name in zip(outs, output_names, strict=True):
        if v.is_const:
            raise ExportError(f"output {name!r} does not depend on the input")
        src = conv.phys_name(v, tuple(range(len(v.shape))))
        conv.b.nodes.append(helper.make_node("Identity", [src], [name], name=name))
        dims = [batch, *v.shape[1:]]
        out_infos.append(helper.make_tensor_value_info(name, _ONNX_DTYPES[v.dtype], dims))
    nodes = _fuse(conv.b.nodes, conv.b.initializers, output_names)
    # drop the Identity nodes: rename each output's producer
    final = []
    for n in nodes:
        if n.op_type == "Identity" and n.output[0] in output_names:
            src = n.input[0]
            prod = [m for m in final if src in m.output]
            if prod and sum(src in m.input for m in nodes) == 1 and src != input_name:
                prod[-1].output[list(prod[-1].output).index(src)] = n.output[0]
                continue
        final.append(n)
    in_dims = [batch, 3, h, w] if input_layout == "NCHW" else [batch, h, w, 3]
    graph = helper.make_graph(
        final, "yolox", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_dims)],
        out_infos, initializer=conv.b.initializers, doc_string=doc,
    )
    opsets = [helper.make_opsetid("", int(opset))]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="yolox-jax",
                              ir_version=helper.find_min_ir_version_for(opsets))
    for k, val in (metadata or {}).items():
        model.metadata_props.add(key=str(k), value=str(val))
    return model


def node_counts(model: Any) -> Counter:
    """Node count per op type of an ONNX model."""
    return Counter(n.op_type for n in model.graph.node)
