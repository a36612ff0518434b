"""Box formats and the one IoU used everywhere (SimOTA, the IoU loss, NMS, evaluation helpers).

Works with numpy and jax.numpy arrays alike (pass `xp`), broadcasting over leading axes: a
pairwise IoU is `box_iou(a[:, None], b[None])`, an aligned one `box_iou(a, b)`.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp


def cxcywh_to_xyxy(boxes: Any, xp: Any = jnp) -> Any:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    cxcy, wh = boxes[..., :2], boxes[..., 2:4]
    return xp.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=-1)


def xyxy_to_cxcywh(boxes: Any, xp: Any = jnp) -> Any:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    x1y1, x2y2 = boxes[..., :2], boxes[..., 2:4]
    return xp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=-1)


def rounded_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a * b` rounded to float32 on its own, never contracted into an FMA by a later add / sub.

    XLA CPU (and, by default, GPU) contracts `a * b + c` into a fused multiply-add, which changes
    the last bit of about 4 % of the IoUs of random boxes. LLVM fuses an `fmul` only when it feeds
    an `fadd` / `fsub` directly; a select in between stops it (and `lax.optimization_barrier`
    does not: XLA CPU removes barriers before fusion). The select is an identity: where `a == 0`
    the product is a zero as well (finite `b`).
    """
    return jnp.where(a != 0, a * b, jnp.zeros_like(a))


def _mul(exact: bool, xp: Any) -> Any:
    return rounded_product if exact and xp is jnp else operator.mul


def box_area(boxes: Any, fmt: str = "xyxy", xp: Any = jnp, exact: bool = False) -> Any:
    """[..., 4] -> [...]: (x2 - x1) * (y2 - y1) for "xyxy", w * h for "cxcywh" (`exact`: as in
    `box_iou`)."""
    mul = _mul(exact, xp)
    if fmt == "cxcywh":
        return mul(boxes[..., 2], boxes[..., 3])
    if fmt == "xyxy":
        return mul(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
    raise ValueError(f"box format must be 'xyxy' or 'cxcywh', got {fmt!r}")


def box_iou(a: Any, b: Any, fmt: str = "xyxy", eps: float = 0.0, xp: Any = jnp,
            exact: bool = False, areas: tuple[Any, Any] | None = None) -> Any:
    """IoU of boxes `a` [..., 4] and `b` [..., 4] (broadcast) -> [...].

    The operation order follows the official code for each format so that float32 results match
    it: "cxcywh" is YOLOX's `bboxes_iou(xyxy=False)` / `IOUloss` (corners from centre -+ size / 2,
    area = w * h, intersection zeroed unless tl < br), "xyxy" is torchvision's NMS kernel
    (area = (x2 - x1) * (y2 - y1), intersection sides clipped at 0). `eps` is added to the union
    (the IoU loss uses 1e-16). `exact` (jnp): every product feeding the union is rounded alone
    (`rounded_product`), so the jitted float32 IoU is bit-identical to the C++ kernel's (NMS).
    `areas`: (`box_area(a)`, `box_area(b)`) when the caller has them (NMS computes them once).
    """
    mul = _mul(exact, xp)
    if fmt == "cxcywh":
        tl = xp.maximum(a[..., :2] - a[..., 2:4] / 2, b[..., :2] - b[..., 2:4] / 2)
        br = xp.minimum(a[..., :2] + a[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2)
        inside = xp.all(tl < br, axis=-1).astype(tl.dtype)
        inter = mul((br[..., 0] - tl[..., 0]) * (br[..., 1] - tl[..., 1]), inside)
    elif fmt == "xyxy":  # per coordinate: [..., 2] intermediates are 3x slower on XLA CPU
        w = xp.maximum(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0)
        h = xp.maximum(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0)
        inter = mul(w, h)
    else:
        raise ValueError(f"box format must be 'xyxy' or 'cxcywh', got {fmt!r}")
    if areas is None:
        areas = (box_area(a, fmt, xp, exact), box_area(b, fmt, xp, exact))
    area_a, area_b = areas
    return inter / (area_a + area_b - inter + eps)
