"""The official YOLOX training losses (`YOLOXHead.get_losses`), batched with fixed shapes.

Terms (each summed, then divided by num_fg = max(total positives over the batch, 1)):
IoU loss 1 - IoU^2 on positives (x5, as returned by the official code), objectness BCE over all
anchors, class BCE on positives with the soft target one_hot(class) * IoU, and optionally L1 on
the raw box outputs. Positives come from SimOTA (`yolox_jax.train.simota`), without gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from yolox_jax.ops.boxes import box_iou
from yolox_jax.train.simota import simota_assign

REG_WEIGHT = 5.0


def bce_with_logits(x: jax.Array, y: jax.Array) -> jax.Array:
    """Elementwise `BCEWithLogitsLoss(reduction="none")`, numerically stable."""
    return jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def l1_targets(gt_boxes: jax.Array, grid: jax.Array, strides: jax.Array) -> jax.Array:
    """Official `get_l1_target`: gt [B, A, 4] (cx, cy, w, h) matched per anchor -> [B, A, 4]
    raw-offset targets (cx / s - x, cy / s - y, log(w / s + 1e-8), log(h / s + 1e-8))."""
    s = strides[:, None]
    xy = gt_boxes[..., :2] / s - grid
    wh = jnp.log(gt_boxes[..., 2:4] / s + 1e-8)
    return jnp.concatenate([xy, wh], axis=-1)


def yolox_losses(
    outputs: jax.Array,
    raw_box: jax.Array,
    grid: jax.Array,
    strides: jax.Array,
    labels: jax.Array,
    use_l1: bool | jax.Array = False,
    rule: str = "center_radius",
    center_radius: float | None = None,
) -> dict[str, jax.Array]:
    """Official YOLOX losses for a padded batch.

    outputs [B, A, 5 + C]: boxes decoded to (cx, cy, w, h) in input pixels, obj and class logits;
    raw_box [B, A, 4]: raw reg outputs (for L1); grid [A, 2]; strides [A];
    labels [B, G, 5] (class, cx, cy, w, h) in input pixels, a row is a box iff its sum > 0.
    Returns float32 scalars: total, iou (the 5x-weighted term, as the official return), obj,
    cls, l1 (0 unless use_l1), num_fg (total positives over the batch, NOT the official
    returned num_fg / num_gts ratio; that is `num_fg / max(num_gts, 1)`), num_gts.
    """
    if outputs.ndim != 3 or outputs.shape[-1] < 6:
        raise ValueError(f"outputs must be [B, A, 5 + C], got {outputs.shape}")
    if raw_box.shape != outputs.shape[:2] + (4,):
        want = outputs.shape[:2] + (4,)
        raise ValueError(f"raw_box must be [B, A, 4]={want}, got {raw_box.shape}")
    if labels.ndim != 3 or labels.shape[0] != outputs.shape[0] or labels.shape[-1] != 5:
        raise ValueError(f"labels must be [B={outputs.shape[0]}, G, 5], got {labels.shape}")
    f32 = jnp.float32
    outputs, raw_box, labels = outputs.astype(f32), raw_box.astype(f32), labels.astype(f32)
    grid, strides = grid.astype(f32), strides.astype(f32)
    num_classes = outputs.shape[-1] - 5
    boxes, obj, cls = outputs[..., :4], outputs[..., 4], outputs[..., 5:]
    valid = jnp.sum(labels, axis=-1) > 0  # [B, G], the official `labels.sum(-1) > 0`

    asg = simota_assign(boxes, cls, obj, grid, strides, labels, valid, rule, center_radius)
    fg = asg.fg_mask  # [B, A]
    fgf = fg.astype(f32)
    num_fg_total = jnp.sum(asg.num_fg)
    denom = jnp.maximum(num_fg_total.astype(f32), 1.0)

    # Matched gt per anchor (meaningful on positives only).
    gt_per_anchor = jnp.take_along_axis(labels, asg.matched_gt[..., None], axis=1)  # [B, A, 5]
    gt_boxes = jax.lax.stop_gradient(gt_per_anchor[..., 1:5])
    gt_cls = gt_per_anchor[..., 0].astype(jnp.int32)

    iou = box_iou(boxes, gt_boxes, fmt="cxcywh", eps=1e-16)
    loss_iou = jnp.sum(jnp.where(fg, 1.0 - iou**2, 0.0)) / denom

    loss_obj = jnp.sum(bce_with_logits(obj, fgf)) / denom

    cls_target = jax.nn.one_hot(gt_cls, num_classes, dtype=f32) * asg.matched_iou[..., None]
    cls_bce = jnp.sum(bce_with_logits(cls, cls_target), axis=-1)
    loss_cls = jnp.sum(jnp.where(fg, cls_bce, 0.0)) / denom

    if isinstance(use_l1, (bool, int)) and not use_l1:
        loss_l1 = jnp.zeros((), f32)
    else:  # True, or a traced flag (one compilation serves both phases of training)
        l1 = jnp.sum(jnp.abs(raw_box - l1_targets(gt_boxes, grid, strides)), axis=-1)
        loss_l1 = jnp.sum(jnp.where(fg, l1, 0.0)) / denom
        if not isinstance(use_l1, (bool, int)):
            loss_l1 = jnp.where(use_l1, loss_l1, jnp.zeros((), f32))

    iou_term = REG_WEIGHT * loss_iou
    return {
        "total": iou_term + loss_obj + loss_cls + loss_l1,
        "iou": iou_term,
        "obj": loss_obj,
        "cls": loss_cls,
        "l1": loss_l1,
        "num_fg": num_fg_total.astype(f32),
        "num_gts": jnp.sum(valid).astype(f32),
    }


def compute_losses(
    model: Any,
    variables: Any,
    images: jax.Array,
    labels: jax.Array,
    use_l1: bool | jax.Array = False,
    train_bn: bool = True,
    rule: str = "center_radius",
    center_radius: float | None = None,
) -> tuple[dict[str, jax.Array], Any]:
    """Forward a YOLOX model in training mode and compute its losses.

    images [B, H, W, 3] (NHWC, as the model takes them), labels [B, G, 5].
    train_bn=True: BN uses batch statistics and the updated `batch_stats` are returned;
    train_bn=False: BN uses the running statistics (frozen BN) and None is returned.
    Returns (losses dict of `yolox_losses`, new batch_stats or None).
    """
    if train_bn:
        out, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        new_stats = updates["batch_stats"]
    else:
        out = model.apply(variables, images, train=True, use_running_average=True)
        new_stats = None
    losses = yolox_losses(
        out["outputs"],
        out["raw_box"],
        out["grid"],
        out["strides"],
        labels,
        use_l1=use_l1,
        rule=rule,
        center_radius=center_radius,
    )
    return losses, new_stats
