"""The official `yolox.utils.boxes.postprocess` with fixed shapes: conf filter, top-k, NMS, padding.

Per image (vmapped over the batch), as the official code does it:
cx,cy,w,h -> x1,y1,x2,y2; `cls_conf, cls = max / argmax` over the class probabilities (first index
on ties, as `torch.max`); candidates are the anchors with `obj * cls_conf >= conf` (float32);
score = `obj * cls_conf`; NMS (`ops.nms`, torchvision's CPU semantics), class-agnostic (`nms`) or
class-aware (`batched_nms`), output in descending score order.

Class-aware NMS follows torchvision's `batched_nms` CPU dispatch exactly: with more than 1000
candidates (`boxes.numel() > 4000`) it runs NMS per class on the boxes as they are ("vanilla");
otherwise it shifts every box by `class * (max_coordinate + 1)` in float32 and runs one
class-agnostic NMS on the shifted boxes ("coordinate trick"). The shift rounds the coordinates
(float32 ulp 2**-8 at 40000), so the IoUs differ slightly between the two paths; both are
reproduced, chosen per image by its candidate count.

Differences from the official code, all reported: only the `pre_nms_topk` best candidates (by
score, ties in anchor order) enter NMS (`num_candidates > pre_nms_topk` is the only case where the
result can differ); at most `max_det` detections are returned (`num_kept > max_det` says some
were cut). Where detections of *different* classes have bit-equal scores, the vanilla path's final
`sort(descending=True)` is assumed stable (torch's CPU sort is); here ties stay in anchor order.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from yolox_jax.ops.boxes import cxcywh_to_xyxy, rounded_product
from yolox_jax.ops.nms import as_threshold, nms_mask, score_order

# torchvision's batched_nms on CPU: per-class loop when boxes.numel() > 4000, i.e. > 1000 boxes.
_VANILLA_MIN_CANDIDATES = 1001


class Detections(NamedTuple):
    """Postprocessed detections, rows beyond `num_valid` zero.

    boxes [B, max_det, 4] x1y1x2y2 in network-input pixels; scores [B, max_det] = obj * cls_conf;
    obj, cls_conf [B, max_det]; classes [B, max_det] int32; num_valid [B] int32 (rows filled);
    num_candidates [B] int32 (anchors with score >= conf, before the top-k cut: more than
    pre_nms_topk means the result may differ from the official one); num_kept [B] int32 (after NMS,
    before the max_det cut: more than max_det means detections were dropped).
    """

    boxes: jax.Array
    scores: jax.Array
    obj: jax.Array
    cls_conf: jax.Array
    classes: jax.Array
    num_valid: jax.Array
    num_candidates: jax.Array
    num_kept: jax.Array


def _postprocess_one(
    pred: jax.Array,
    conf_thr: jax.Array,
    nms_thr: jax.Array,
    class_agnostic: bool,
    pre_nms_topk: int,
    max_det: int,
) -> Detections:
    """One image: pred [N, 5 + C] -> Detections without the batch axis."""
    n = pred.shape[0]
    boxes = cxcywh_to_xyxy(pred[:, :4])
    obj = pred[:, 4]
    cls_probs = pred[:, 5:]
    cls_conf = jnp.max(cls_probs, axis=1)
    classes = jnp.argmax(cls_probs, axis=1).astype(jnp.int32)
    scores = obj * cls_conf
    cand = scores >= conf_thr
    num_candidates = jnp.sum(cand, dtype=jnp.int32)

    k = min(pre_nms_topk, n)
    top = score_order(scores, cand)[:k]
    t_boxes, t_scores, t_valid, t_cls = boxes[top], scores[top], cand[top], classes[top]

    if class_agnostic:
        keep = nms_mask(t_boxes, t_scores, t_valid, nms_thr, None, presorted=True)
    else:
        # max over the coordinates of every candidate (before top-k), as batched_nms sees them
        max_coord = jnp.max(jnp.where(cand[:, None], boxes, -jnp.inf))
        offsets = rounded_product(t_cls.astype(jnp.float32), max_coord + jnp.float32(1))
        trick = num_candidates < _VANILLA_MIN_CANDIDATES
        nms_boxes = jnp.where(trick, t_boxes + offsets[:, None], t_boxes)
        nms_cls = jnp.where(trick, 0, t_cls)
        keep = nms_mask(nms_boxes, t_scores, t_valid, nms_thr, nms_cls, presorted=True)

    num_kept = jnp.sum(keep, dtype=jnp.int32)
    slot = jnp.where(keep, jnp.cumsum(keep, dtype=jnp.int32) - 1, max_det)  # max_det: dropped

    def compact(x: jax.Array) -> jax.Array:
        out = jnp.zeros((max_det,) + x.shape[1:], x.dtype)
        return out.at[slot].set(x, mode="drop")

    return Detections(
        boxes=compact(t_boxes),
        scores=compact(t_scores),
        obj=compact(obj[top]),
        cls_conf=compact(cls_conf[top]),
        classes=compact(t_cls),
        num_valid=jnp.minimum(num_kept, max_det),
        num_candidates=num_candidates,
        num_kept=num_kept,
    )


@partial(jax.jit, static_argnames=("class_agnostic", "pre_nms_topk", "max_det"))
def _postprocess_jit(
    decoded: jax.Array,
    conf_thr: jax.Array,
    nms_thr: jax.Array,
    class_agnostic: bool,
    pre_nms_topk: int,
    max_det: int,
) -> Detections:
    one = partial(
        _postprocess_one,
        conf_thr=conf_thr,
        nms_thr=nms_thr,
        class_agnostic=class_agnostic,
        pre_nms_topk=pre_nms_topk,
        max_det=max_det,
    )
    return jax.vmap(one)(decoded)


def postprocess(
    decoded: Any,
    conf_thr: Any,
    nms_thr: Any,
    class_agnostic: bool = False,
    pre_nms_topk: int = 1000,
    max_det: int = 300,
) -> Detections:
    """decoded [B, N, 5 + C] (cx, cy, w, h, obj, cls probs: the head's output) -> Detections.

    `conf_thr` is compared in float32 (as torch does with a Python float); `nms_thr` as a Python
    float gets torchvision's double comparison exactly (see `ops.nms.nms_threshold_f32`); either may
    be a traced float32 scalar (no recompilation when they change). `class_agnostic`,
    `pre_nms_topk`, `max_det` are static. Jitted; one compilation per input shape and static args.
    """
    decoded = jnp.asarray(decoded)
    if decoded.ndim != 3 or decoded.shape[-1] < 6:
        raise ValueError(
            f"postprocess: decoded must be [B, N, 5 + C] with C >= 1, got shape {decoded.shape}"
        )
    if not jnp.issubdtype(decoded.dtype, jnp.floating):
        raise ValueError(f"postprocess: decoded must be floating point, got {decoded.dtype}")
    if int(pre_nms_topk) < 1 or int(max_det) < 1:
        raise ValueError(
            f"postprocess: pre_nms_topk ({pre_nms_topk}) and max_det ({max_det}) must be >= 1"
        )
    conf = jnp.asarray(conf_thr, jnp.float32)
    return _postprocess_jit(
        decoded.astype(jnp.float32),
        conf,
        as_threshold(nms_thr),
        class_agnostic=bool(class_agnostic),
        pre_nms_topk=int(pre_nms_topk),
        max_det=int(max_det),
    )


def official_rows(boxes: np.ndarray, obj: np.ndarray, cls_conf: np.ndarray,
                  classes: np.ndarray) -> np.ndarray:
    """boxes [K, 4], obj / cls_conf / classes [K] -> [K, 7] float32 in the official row layout
    (x1, y1, x2, y2, obj, cls_conf, cls): the one row layout (`ImageDetections.rows`, the
    multi-host gather, `detections_to_rows`)."""
    return np.concatenate(
        [np.asarray(boxes).reshape(-1, 4), np.asarray(obj)[:, None],
         np.asarray(cls_conf)[:, None], np.asarray(classes)[:, None].astype(np.float32)],
        axis=1,
    ).astype(np.float32)


def detections_to_rows(det: Detections) -> list[np.ndarray]:
    """Detections -> per image a NumPy [num_valid, 7] array in the official row layout
    (`official_rows`), as `postprocess` of the official code returns them (it returns None for
    an image without detections; here a [0, 7] array)."""
    boxes, obj, cls_conf, classes, num_valid = jax.device_get(
        (det.boxes, det.obj, det.cls_conf, det.classes, det.num_valid)
    )
    return [official_rows(boxes[b, :v], obj[b, :v], cls_conf[b, :v], classes[b, :v])
            for b, v in enumerate(int(n) for n in num_valid)]
