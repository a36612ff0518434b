"""Exact greedy NMS with fixed shapes (jit / vmap friendly), bit-compatible with torchvision.

torchvision's `nms` (CPU) sorts the scores with a stable descending sort, then walks that order: a
box that is not yet suppressed is kept and suppresses every later box j whose float32
`inter / (area_i + area_j - inter)` is `> iou_threshold` (the threshold is a C++ double). This
module reproduces that rule exactly:

* IoU in float32 in the kernel's operation order: `ops.boxes.box_iou(..., exact=True)`. XLA CPU
  (and, by default, GPU) contracts `a * b + c` into a fused multiply-add, which changes the last
  bit of about 4 % of the IoUs of random boxes (measured on jax 0.10.2 CPU with the plain
  `box_iou` under jit; `lax.optimization_barrier` does not help, XLA CPU removes it before
  fusion). With `exact=True` every product that feeds an add goes through an identity select
  (`ops.boxes.rounded_product`), which LLVM cannot contract through, so the IoUs are bit-identical
  to the C++ kernel's (tested).
* float32 IoU `>` double threshold: for a Python float threshold `t` this equals float32 IoU `>`
  `t` rounded *down* to float32 (`nms_threshold_f32`); a traced threshold is used as the float32
  value it holds (exact when it is representable, e.g. 0.5, or when it was made by
  `nms_threshold_f32`).
* exactly greedy (not "fast NMS"): a `lax.while_loop` that jumps from one kept box to the next,
  computing one IoU row [K] per kept box, so the cost is O(kept * K) with no [K, K] matrix.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yolox_jax.ops.boxes import box_area, box_iou


def nms_threshold_f32(threshold: float) -> np.float32:
    """The float32 `t32` with `iou32 > t32` <=> `iou32 > threshold` (double), for every float32 IoU.

    That is `threshold` rounded towards -inf (if 0.6 rounds up to 0.6000000238, an IoU of exactly
    that float32 value is `> 0.6` in torchvision, so the threshold must be the float32 below it).
    """
    t = float(threshold)
    t32 = np.float32(t)
    if float(t32) > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return np.float32(t32)


def as_threshold(threshold: Any) -> jax.Array:
    """Python / NumPy scalars get the exact double semantics; traced values are used as float32."""
    if isinstance(threshold, (float, int, np.floating, np.integer)):
        return jnp.asarray(nms_threshold_f32(float(threshold)))
    return jnp.asarray(threshold, jnp.float32)


def pairwise_iou(boxes: jax.Array) -> jax.Array:
    """[K, 4] x1y1x2y2 -> [K, K] float32 IoU, bit-identical to torchvision's CPU NMS kernel."""
    boxes = jnp.asarray(boxes, jnp.float32)
    return box_iou(boxes[:, None], boxes[None], exact=True)


def score_order(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """[K] -> [K] int32 permutation: valid first, then score descending, ties by index (stable).

    Equals torch's `scores.sort(stable=True, descending=True)` on the valid entries.
    """
    k = scores.shape[0]
    idx = jnp.arange(k, dtype=jnp.int32)
    neg = jnp.where(valid, -scores.astype(jnp.float32), 0.0)
    *_, perm = jax.lax.sort(((~valid).astype(jnp.int32), neg, idx), num_keys=3)
    return perm


def _greedy_sorted(
    boxes: jax.Array, valid: jax.Array, thr: jax.Array, classes: jax.Array | None
) -> jax.Array:
    """Greedy NMS over candidates already in processing order -> keep [K] bool."""
    k = boxes.shape[0]
    idx = jnp.arange(k, dtype=jnp.int32)
    areas = box_area(boxes, exact=True)  # once, not per kept box

    def first_open(after: jax.Array, suppressed: jax.Array) -> jax.Array:
        open_ = valid & ~suppressed & (idx > after)
        return jnp.where(open_.any(), jnp.argmax(open_).astype(jnp.int32), jnp.int32(k))

    def cond(state: tuple[jax.Array, jax.Array]) -> jax.Array:
        return state[0] < k

    def body(state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, suppressed = state  # box i is kept: it is valid and no earlier kept box suppressed it
        over = box_iou(boxes[i], boxes, exact=True, areas=(areas[i], areas)) > thr  # [K]
        if classes is not None:
            over = over & (classes == classes[i])
        suppressed = suppressed | (over & (idx > i))
        return first_open(i, suppressed), suppressed

    suppressed0 = jnp.zeros((k,), bool)
    init = (first_open(jnp.int32(-1), suppressed0), suppressed0)
    _, suppressed = jax.lax.while_loop(cond, body, init)
    return valid & ~suppressed


def nms_mask(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    iou_threshold: Any,
    classes: jax.Array | None = None,
    *,
    presorted: bool = False,
) -> jax.Array:
    """Greedy NMS -> keep [K] bool (same positions as the inputs).

    boxes [K, 4] x1y1x2y2 float32, scores [K], valid [K] bool (invalid entries are never kept and
    never suppress), classes [K] int or None: with classes only boxes of the same class suppress
    each other (torchvision's `batched_nms` "vanilla" path), without them NMS is class-agnostic.
    The candidates are visited in stable descending score order (torch's `sort(stable=True)`);
    `presorted=True` skips the sort when the caller already has them in that order (valid first,
    score descending, ties by position). `iou_threshold`: Python float (exact double semantics) or a
    traced float32 scalar (see `nms_threshold_f32`). Pure jnp, fixed shapes, jit / vmap-able.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    valid = jnp.asarray(valid, bool)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms_mask: boxes must be [K, 4] x1y1x2y2, got shape {boxes.shape}")
    k = boxes.shape[0]
    if scores.shape != (k,) or valid.shape != (k,):
        raise ValueError(
            f"nms_mask: scores {scores.shape} and valid {valid.shape} must both be [{k}] like boxes"
        )
    if classes is not None:
        classes = jnp.asarray(classes)
        if classes.shape != (k,):
            raise ValueError(f"nms_mask: classes must be [{k}] like boxes, got {classes.shape}")
    thr = as_threshold(iou_threshold)
    if k == 0:
        return jnp.zeros((0,), bool)
    if presorted:
        return _greedy_sorted(boxes, valid, thr, classes)
    perm = score_order(scores, valid)
    keep_sorted = _greedy_sorted(
        boxes[perm], valid[perm], thr, None if classes is None else classes[perm]
    )
    return jnp.zeros((k,), bool).at[perm].set(keep_sorted)
