"""SimOTA label assignment (the official `YOLOXHead.get_assignments`), batched and jittable.

The official code loops over images, keeps only the candidate anchors of each image and calls
`topk` with a data-dependent k. Here every array keeps a fixed shape so one compiled program
serves every batch: all anchors stay in place (non-candidates get an infinite cost), the
dynamic k is applied as a rank mask over a fixed top-10, and padding gt rows are masked out.
Nothing here carries a gradient (the official method runs under `torch.no_grad`).

Largest intermediates are [B, G, A] (never [B, G, A, C]): the summed class BCE is decomposed as
`sum_c BCE(p_c, 0) + BCE(p_gt, 1) - BCE(p_gt, 0)`, with `p_gt` gathered at the gt class.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from yolox_jax.config import ASSIGNMENT_RULES as RULES
from yolox_jax.ops.boxes import box_iou

# Rule -> (default centre radius in strides, cost penalty for pairs outside the geometry prior).
_RULE_DEFAULTS = {"center_radius": (1.5, 1e6), "box_or_center": (2.5, 1e5)}
TOPK_CANDIDATES = 10  # official `n_candidate_k` bound; dynamic k never exceeds it


class Assignment(NamedTuple):
    """SimOTA result (a pytree). Anchor-indexed arrays are over all A anchors.

    fg_mask [B, A] bool: anchor is a positive.
    matched_gt [B, A] int32: index into the G gt rows of the gt it is assigned to (0 where not fg).
    matched_iou [B, A] float32: IoU of the prediction with that gt (0 where not fg); the official
        `pred_ious_this_matching`, the soft class target.
    num_fg [B] int32: positives per image.
    dynamic_k [B, G] int32: the official `dynamic_ks` (0 for padding rows).
    """

    fg_mask: jax.Array
    matched_gt: jax.Array
    matched_iou: jax.Array
    num_fg: jax.Array
    dynamic_k: jax.Array


class PairCosts(NamedTuple):
    """Per (gt, anchor) quantities SimOTA matches on; all [B, G, A] except `candidates` [B, A].

    candidates: the official `anchor_filter` / `is_in_boxes_anchor` (OR over valid gts).
    geometry: pairs exempt from the penalty (`geometry_relation` / `is_in_boxes_and_center`).
    iou: predicted box vs gt IoU (`pair_wise_ious`).
    cost: the official cost at candidate anchors of valid gts, +inf elsewhere.
    """

    candidates: jax.Array
    geometry: jax.Array
    iou: jax.Array
    cost: jax.Array


def _check_shapes(pred_boxes, cls_logits, obj_logits, grid, strides, gt, gt_valid) -> None:
    """Trace-time shape validation (shapes are static), with messages naming the argument."""
    if pred_boxes.ndim != 3 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"pred_boxes must be [B, A, 4] (cx, cy, w, h), got {pred_boxes.shape}")
    b, a, _ = pred_boxes.shape
    if cls_logits.ndim != 3 or cls_logits.shape[:2] != (b, a):
        raise ValueError(f"cls_logits must be [B={b}, A={a}, C], got {cls_logits.shape}")
    if obj_logits.shape != (b, a):
        raise ValueError(f"obj_logits must be [B={b}, A={a}], got {obj_logits.shape}")
    if grid.shape != (a, 2):
        raise ValueError(f"grid must be [A={a}, 2] (x, y cell indices), got {grid.shape}")
    if strides.shape != (a,):
        raise ValueError(f"strides must be [A={a}], got {strides.shape}")
    if gt.ndim != 3 or gt.shape[0] != b or gt.shape[-1] != 5:
        raise ValueError(f"gt must be [B={b}, G, 5] (class, cx, cy, w, h), got {gt.shape}")
    if gt_valid.shape != gt.shape[:2]:
        raise ValueError(f"gt_valid must be [B, G]={gt.shape[:2]}, got {gt_valid.shape}")


def _resolve_rule(rule: str, center_radius: float | None) -> tuple[float, float]:
    if rule not in _RULE_DEFAULTS:
        raise ValueError(f"SimOTA rule must be one of {RULES}, got {rule!r}")
    default_radius, penalty = _RULE_DEFAULTS[rule]
    return (default_radius if center_radius is None else float(center_radius)), penalty


def _geometry(
    gt_boxes: jax.Array, grid: jax.Array, strides: jax.Array, rule: str, radius: float
) -> tuple[jax.Array, jax.Array]:
    """Geometry prior in the official operation order for each rule.

    Returns (candidate_pair [B, G, A]: the anchor is a candidate because of this gt,
    exempt [B, G, A]: the pair gets no cost penalty).
    """
    gx, gy = gt_boxes[..., 0:1], gt_boxes[..., 1:2]  # [B, G, 1]
    if rule == "center_radius":
        # get_geometry_constraint: centre ((x + 0.5) * s), square gt_centre +- radius * s.
        xc = (grid[:, 0] + 0.5) * strides
        yc = (grid[:, 1] + 0.5) * strides
        dist = strides * radius
        in_center = (
            ((xc - (gx - dist)) > 0)
            & ((yc - (gy - dist)) > 0)
            & (((gx + dist) - xc) > 0)
            & (((gy + dist) - yc) > 0)
        )
        return in_center, in_center
    # box_or_center (a4152a5 get_in_boxes_info): centre x * s + 0.5 * s.
    xc = grid[:, 0] * strides + 0.5 * strides
    yc = grid[:, 1] * strides + 0.5 * strides
    gw, gh = gt_boxes[..., 2:3], gt_boxes[..., 3:4]
    in_box = (
        ((xc - (gx - 0.5 * gw)) > 0)
        & ((yc - (gy - 0.5 * gh)) > 0)
        & (((gx + 0.5 * gw) - xc) > 0)
        & (((gy + 0.5 * gh) - yc) > 0)
    )
    dist = radius * strides
    in_center = (
        ((xc - (gx - dist)) > 0)
        & ((yc - (gy - dist)) > 0)
        & (((gx + dist) - xc) > 0)
        & (((gy + dist) - yc) > 0)
    )
    return in_box | in_center, in_box & in_center


def _bce_neg(p: jax.Array) -> jax.Array:
    """torch `binary_cross_entropy(p, 0)`: -max(log(1 - p), -100)."""
    return -jnp.maximum(jnp.log1p(-p), -100.0)


def _bce_pos(p: jax.Array) -> jax.Array:
    """torch `binary_cross_entropy(p, 1)`: -max(log(p), -100)."""
    return -jnp.maximum(jnp.log(p), -100.0)


def simota_costs(
    pred_boxes: jax.Array,
    cls_logits: jax.Array,
    obj_logits: jax.Array,
    grid: jax.Array,
    strides: jax.Array,
    gt: jax.Array,
    gt_valid: jax.Array,
    rule: str = "center_radius",
    center_radius: float | None = None,
) -> PairCosts:
    """The official pair costs, for all anchors at once (see `simota_assign` for the arguments).

    cost = sum_c BCE(sqrt(sigmoid(cls) * sigmoid(obj)), one_hot(gt class))
           + 3 * -log(IoU + 1e-8) + penalty * (pair not in the geometry prior),
    penalty 1e6 (current rule) or 1e5 (legacy rule), in float32.
    """
    _check_shapes(pred_boxes, cls_logits, obj_logits, grid, strides, gt, gt_valid)
    radius, penalty = _resolve_rule(rule, center_radius)
    f32 = jnp.float32
    pred_boxes, cls_logits, obj_logits, gt = (
        jax.lax.stop_gradient(x.astype(f32)) for x in (pred_boxes, cls_logits, obj_logits, gt)
    )
    grid, strides = grid.astype(f32), strides.astype(f32)
    num_classes = cls_logits.shape[-1]
    valid = gt_valid.astype(bool)  # [B, G]
    gt_boxes = gt[..., 1:5]

    cand_pair, exempt = _geometry(gt_boxes, grid, strides, rule, radius)
    candidates = jnp.any(cand_pair & valid[..., None], axis=1)  # [B, A]

    iou = box_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :], fmt="cxcywh")  # [B,G,A]
    iou = jnp.where(jnp.isnan(iou), 0.0, iou)  # degenerate (zero-area) pairs

    # Class cost: [B, A, C] per-anchor terms, then one [B, G, A] gather at the gt class.
    p = jnp.sqrt(jax.nn.sigmoid(cls_logits) * jax.nn.sigmoid(obj_logits)[..., None])
    neg = _bce_neg(p)  # [B, A, C]
    neg_sum = jnp.sum(neg, axis=-1)  # [B, A]
    gt_cls = jnp.clip(gt[..., 0].astype(jnp.int32), 0, num_classes - 1)  # [B, G]
    p_t = jnp.swapaxes(p, 1, 2)  # [B, C, A]
    p_gt = jnp.take_along_axis(p_t, gt_cls[:, :, None], axis=1)  # [B, G, A]
    cls_cost = neg_sum[:, None, :] - _bce_neg(p_gt) + _bce_pos(p_gt)

    cost = cls_cost + 3.0 * -jnp.log(iou + 1e-8) + penalty * (~exempt).astype(f32)
    usable = candidates[:, None, :] & valid[..., None]
    cost = jnp.where(usable, cost, jnp.inf)
    return PairCosts(candidates, exempt, iou, cost)


def simota_assign(
    pred_boxes: jax.Array,
    cls_logits: jax.Array,
    obj_logits: jax.Array,
    grid: jax.Array,
    strides: jax.Array,
    gt: jax.Array,
    gt_valid: jax.Array,
    rule: str = "center_radius",
    center_radius: float | None = None,
) -> Assignment:
    """SimOTA over a padded batch, exactly as the official `get_assignments` per image.

    pred_boxes [B, A, 4] (cx, cy, w, h, input pixels), cls_logits [B, A, C], obj_logits [B, A],
    grid [A, 2] (x, y cell indices), strides [A], gt [B, G, 5] (class, cx, cy, w, h),
    gt_valid [B, G] bool (padding rows False; they are never matched and may sit anywhere).
    rule: "center_radius" (current official: candidates strictly within +-radius strides of a
    gt centre, default radius 1.5) or "box_or_center" (before PR #1589, the rule of the released
    weights: in the box or within the radius, default 2.5). Any input dtype; float32 inside.

    Matching: dynamic k = max(1, int(sum of the 10 largest candidate IoUs)); each gt takes its
    k cheapest candidate anchors (ties: lowest anchor index, as torch); an anchor taken by
    several gts goes to the argmin of its cost column over all gts (first index on ties).

    The work is [B, G', A] with G' the smallest of `gt_buckets(G)` that holds the most boxes
    any image of the batch has (the official code, per image, does only its real boxes; G is
    the padded `max_labels`, often 10x the real count): the valid rows are moved first (in
    their order, so ties resolve as before), the rows past G' are all padding and never
    matched, and one compiled `lax.switch` branch per bucket runs only the one needed.
    """
    _check_shapes(pred_boxes, cls_logits, obj_logits, grid, strides, gt, gt_valid)
    args = (pred_boxes, cls_logits, obj_logits, grid, strides)
    args = tuple(jax.lax.stop_gradient(a) for a in args)
    gt = jax.lax.stop_gradient(gt)
    valid = gt_valid.astype(bool)
    b, g = valid.shape
    buckets = gt_buckets(g)
    if len(buckets) == 1:
        return _match(simota_costs(*args, gt, valid, rule, center_radius), valid)
    order = jnp.argsort(~valid, axis=1, stable=True)  # [B, G]: valid rows first, in order
    gt_c = jnp.take_along_axis(gt, order[..., None], axis=1)
    valid_c = jnp.take_along_axis(valid, order, axis=1)
    most = jnp.max(jnp.sum(valid, axis=1))
    branch = jnp.searchsorted(jnp.asarray(buckets), most)  # the first bucket >= most

    def run(rows: int) -> Assignment:
        gt_r, valid_r = gt_c[:, :rows], valid_c[:, :rows]
        a = _match(simota_costs(*args, gt_r, valid_r, rule, center_radius), valid_r)
        matched = jnp.take_along_axis(order, a.matched_gt, axis=1)  # back to rows of `gt`
        rows_b = jnp.arange(b)[:, None]
        dynamic_k = jnp.zeros((b, g), jnp.int32).at[rows_b, order[:, :rows]].set(a.dynamic_k)
        return a._replace(matched_gt=jnp.where(a.fg_mask, matched, 0).astype(jnp.int32),
                          dynamic_k=dynamic_k)

    return jax.lax.switch(branch, [lambda r=r: run(r) for r in buckets])


def gt_buckets(g: int) -> tuple[int, ...]:
    """The gt-row counts SimOTA is compiled for, for G padded rows: 8, 16, 32, ... below G,
    then G."""
    out, n = [], 8
    while n < g:
        out.append(n)
        n *= 2
    return (*out, g)


def _match(pc: PairCosts, gt_valid: jax.Array) -> Assignment:
    """The matching of `simota_assign` on the pair costs of all G rows (see there)."""
    valid = gt_valid.astype(bool)
    num_anchors = pc.cost.shape[-1]
    topk = min(TOPK_CANDIDATES, num_anchors)

    # Dynamic k from the top-10 IoUs over the image's candidate anchors.
    cand_iou = jnp.where(pc.candidates[:, None, :], pc.iou, 0.0)
    top_iou = jax.lax.top_k(cand_iou, topk)[0]  # [B, G, topk], descending
    dynamic_k = jnp.maximum(jnp.sum(top_iou, axis=-1).astype(jnp.int32), 1)
    dynamic_k = jnp.where(valid, dynamic_k, 0)

    # The k cheapest anchors per gt: lax.top_k is stable (lower index first on ties), so the
    # selection is {cost < c_k} | {cost == c_k and index <= i_k}, (c_k, i_k) the k-th pick.
    neg_cost, idx = jax.lax.top_k(-pc.cost, topk)  # [B, G, topk]
    kth = jnp.maximum(dynamic_k - 1, 0)[..., None]
    c_k = -jnp.take_along_axis(neg_cost, kth, axis=-1)  # [B, G, 1]
    i_k = jnp.take_along_axis(idx, kth, axis=-1)
    anchor_ids = jnp.arange(num_anchors, dtype=idx.dtype)
    matching = (pc.cost < c_k) | ((pc.cost == c_k) & (anchor_ids <= i_k))
    matching &= (dynamic_k > 0)[..., None] & jnp.isfinite(pc.cost)  # [B, G, A]

    count = jnp.sum(matching, axis=1, dtype=jnp.int32)  # [B, A]
    fg_mask = count > 0
    sole = jnp.argmax(matching, axis=1)
    cheapest = jnp.argmin(jnp.where(valid[..., None], pc.cost, jnp.inf), axis=1)
    matched_gt = jnp.where(count > 1, cheapest, sole)
    matched_gt = jnp.where(fg_mask, matched_gt, 0).astype(jnp.int32)
    matched_iou = jnp.take_along_axis(pc.iou, matched_gt[:, None, :], axis=1)[:, 0]
    matched_iou = jnp.where(fg_mask, matched_iou, 0.0)
    out = Assignment(
        fg_mask=fg_mask,
        matched_gt=matched_gt,
        matched_iou=matched_iou,
        num_fg=jnp.sum(fg_mask, axis=1, dtype=jnp.int32),
        dynamic_k=dynamic_k.astype(jnp.int32),
    )
    return jax.tree.map(jax.lax.stop_gradient, out)
