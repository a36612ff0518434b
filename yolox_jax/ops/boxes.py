"""Box formats and the one IoU used everywhere (SimOTA, the IoU loss, NMS, evaluation helpers).

Works with numpy and jax.numpy arrays alike (pass `xp`), broadcasting over leading axes: a
pairwise IoU is `box_iou(a[:, None], b[None])`, an aligned one `box_iou(a, b)`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def cxcywh_to_xyxy(boxes: Any, xp: Any = jnp) -> Any:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    cxcy, wh = boxes[..., :2], boxes[..., 2:4]
    return xp.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=-1)


def xyxy_to_cxcywh(boxes: Any, xp: Any = jnp) -> Any:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    x1y1, x2y2 = boxes[..., :2], boxes[..., 2:4]
    return xp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=-1)


def box_iou(a: Any, b: Any, fmt: str = "xyxy", eps: float = 0.0, xp: Any = jnp) -> Any:
    """IoU of boxes `a` [..., 4] and `b` [..., 4] (broadcast) -> [...].

    The operation order follows the official code for each format so that float32 results match
    it: "cxcywh" is YOLOX's `bboxes_iou(xyxy=False)` / `IOUloss` (corners from centre -+ size / 2,
    area = w * h, intersection zeroed unless tl < br), "xyxy" is torchvision's NMS kernel
    (area = (x2 - x1) * (y2 - y1), intersection sides clipped at 0). `eps` is added to the union
    (the IoU loss uses 1e-16).
    """
    if fmt == "cxcywh":
        tl = xp.maximum(a[..., :2] - a[..., 2:4] / 2, b[..., :2] - b[..., 2:4] / 2)
        br = xp.minimum(a[..., :2] + a[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2)
        area_a = a[..., 2] * a[..., 3]
        area_b = b[..., 2] * b[..., 3]
        inside = xp.all(tl < br, axis=-1).astype(tl.dtype)
        inter = (br[..., 0] - tl[..., 0]) * (br[..., 1] - tl[..., 1]) * inside
    elif fmt == "xyxy":
        tl = xp.maximum(a[..., :2], b[..., :2])
        br = xp.minimum(a[..., 2:4], b[..., 2:4])
        area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
        area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        wh = xp.maximum(br - tl, 0)
        inter = wh[..., 0] * wh[..., 1]
    else:
        raise ValueError(f"box format must be 'xyxy' or 'cxcywh', got {fmt!r}")
    return inter / (area_a + area_b - inter + eps)
