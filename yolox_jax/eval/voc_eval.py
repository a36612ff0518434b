"""Pascal VOC mAP exactly as the official `VOCEvaluator` + `yolox/evaluators/voc_eval.py`.

The official pipeline writes each class's detections to a text file and reads them back, so the
numbers depend on that round trip, which is reproduced here in memory:

* detections are in the 0-based pixels the model learned (the readers subtract 1 from VOC
  coordinates); the results file holds `score` with 3 decimals and `box + 1` (float32) with 1;
* ground truth is the xml's 1-based integer boxes (`record.boxes + 1`), difficult flags kept:
  a detection matched to a difficult box is neither a true nor a false positive, and difficult
  boxes do not count in the recall's denominator;
* per class, detections of all images are sorted by `np.argsort(-score)` (same input order:
  images in dataset order, each image's detections in descending score), and greedily matched
  to the ground truth of highest IoU (+1 px convention: w = x2 - x1 + 1), a match needing
  IoU > threshold (strict) and an unclaimed box;
* AP per class: the VOC2007 11-point metric (default; the official uses it for every year < 2010,
  i.e. its VOC2007 test set) or the area under the interpolated PR curve; a class without
  detections has AP 0; a class without positives has 11-point AP 0 and area AP nan (as there);
* mAP@0.5 and mAP@0.5:0.95 = the mean over IoU 0.5, 0.55, ..., 0.95 of the class-mean AP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from recall / precision [D] (cumulative over the score-sorted detections)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def results_file_round_trip(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """boxes [D, 4] 0-based float32, scores [D] float32 -> (boxes + 1 with 1 decimal, scores with
    3 decimals) as float64, what the official results file ("{:.3f} {:.1f} ...") holds."""
    b = (np.asarray(boxes, np.float32) + np.float32(1)).tolist()
    s = np.asarray(scores, np.float32).tolist()
    rb = np.array([[float(f"{v:.1f}") for v in row] for row in b], np.float64).reshape(-1, 4)
    rs = np.array([float(f"{v:.3f}") for v in s], np.float64)
    return rb, rs


def _overlaps(bb: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with gt [G, 4], +1 px convention (official `voc_eval`)."""
    iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]) + 1.0, 0.0)
    inters = iw * ih
    uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
           + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
    return inters / uni


def class_pr(
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = (0.5,),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One class: (recall [D], precision [D]) at each IoU threshold, cumulative over the
    detections sorted by score (the official `voc_eval` matching; see `class_ap` for the
    arguments). No detections: empty arrays."""
    if len(det_scores) == 0:
        return [(np.zeros(0), np.zeros(0)) for _ in iou_thresholds]
    npos = int(sum(int((~np.asarray(d, bool)).sum()) for d in gt_difficult))
    order = np.argsort(-np.asarray(det_scores, np.float64))
    det_image = np.asarray(det_image)[order]
    det_boxes = np.asarray(det_boxes, np.float64)[order]
    ovmax = np.full(len(order), -np.inf)
    jmax = np.zeros(len(order), np.int64)
    for d in range(len(order)):
        gt = np.asarray(gt_boxes[det_image[d]], np.float64).reshape(-1, 4)
        if gt.size:
            ov = _overlaps(det_boxes[d], gt)
            ovmax[d], jmax[d] = ov.max(), ov.argmax()
    curves = []
    for thr in iou_thresholds:
        claimed = [np.zeros(len(np.asarray(g).reshape(-1, 4)), bool) for g in gt_boxes]
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for d in range(len(order)):
            if ovmax[d] > thr:
                i, j = det_image[d], jmax[d]
                if not gt_difficult[i][j]:
                    if not claimed[i][j]:
                        tp[d] = 1.0
                        claimed[i][j] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        curves.append((rec, prec))
    return curves


def class_ap(
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = (0.5,),
    use_07_metric: bool = True,
) -> list[float]:
    """One class: AP at each IoU threshold.

    det_image [D] int (image index), det_scores [D], det_boxes [D, 4] (already through
    `results_file_round_trip`, in file order); gt_boxes[i] [G_i, 4] 1-based, gt_difficult[i] [G_i]
    bool. The IoU of each detection with its image's boxes does not depend on the threshold, so
    it is computed once.
    """
    if len(det_scores) == 0:
        return [0.0 for _ in iou_thresholds]
    curves = class_pr(det_image, det_scores, det_boxes, gt_boxes, gt_difficult, iou_thresholds)
    return [voc_ap(rec, prec, use_07_metric) for rec, prec in curves]


def _per_class_inputs(
    detections: Sequence[Any], records: Sequence[Any], num_classes: int
):
    """-> (per class c: (det_image, file_scores, file_boxes, gt boxes, gt difficult)), the
    number of detections. Detections go through the official results-file round trip."""
    if len(detections) != len(records):
        raise ValueError(f"{len(detections)} detection sets for {len(records)} records")
    gt_boxes = [np.asarray(r.boxes, np.float64).reshape(-1, 4) + 1.0 for r in records]
    gt_classes = [np.asarray(r.classes, np.int64).reshape(-1) for r in records]
    gt_diff = [np.asarray(r.difficult, bool).reshape(-1) for r in records]
    img_idx = np.concatenate(
        [np.full(len(d), i, np.int64) for i, d in enumerate(detections)] + [np.zeros(0, np.int64)]
    )
    boxes = np.concatenate([np.asarray(d.boxes, np.float32).reshape(-1, 4) for d in detections]
                           + [np.zeros((0, 4), np.float32)])
    scores = np.concatenate([np.asarray(d.scores, np.float32).reshape(-1) for d in detections]
                            + [np.zeros(0, np.float32)])
    classes = np.concatenate([np.asarray(d.classes, np.int64).reshape(-1) for d in detections]
                             + [np.zeros(0, np.int64)])
    file_boxes, file_scores = results_file_round_trip(boxes, scores)
    per_class = []
    for c in range(num_classes):
        sel = classes == c  # stable: image order, then each image's score order
        cls_gt = [b[k == c] for b, k in zip(gt_boxes, gt_classes, strict=True)]
        cls_diff = [d[k == c] for d, k in zip(gt_diff, gt_classes, strict=True)]
        per_class.append((img_idx[sel], file_scores[sel], file_boxes[sel], cls_gt, cls_diff))
    return per_class, int(len(scores))


def voc_pr_curves(
    detections: Sequence[Any],
    records: Sequence[Any],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Class name -> (recall [D], precision [D], AP) at one IoU threshold (for plots)."""
    per_class, _ = _per_class_inputs(detections, records, len(class_names))
    out = {}
    for name, args in zip(class_names, per_class, strict=True):
        ((rec, prec),) = class_pr(*args, iou_thresholds=(iou_threshold,))
        ap = voc_ap(rec, prec, use_07_metric) if len(rec) else 0.0
        out[name] = (np.nan_to_num(rec), prec, ap)
    return out


def evaluate_voc(
    detections: Sequence[Any],
    records: Sequence[Any],
    class_names: Sequence[str],
    use_07_metric: bool = True,
    iou_thresholds: Sequence[float] = tuple(IOU_THRESHOLDS),
) -> dict[str, Any]:
    """Per-image detections (`ImageDetections`, 0-based pixels) vs the readers' VOC records.

    Returns mAP50, mAP50_95, mAP_per_iou (threshold -> mAP), per_class_AP50 and per_class_AP50_95
    (name -> AP), num_detections, metric ("voc07_11point" or "area").
    """
    num_classes = len(class_names)
    per_class, num_detections = _per_class_inputs(detections, records, num_classes)
    table = np.zeros((num_classes, len(iou_thresholds)))
    for c, (det_image, det_scores, det_boxes, cls_gt, cls_diff) in enumerate(per_class):
        if not any(len(b) for b in cls_gt) and len(det_scores):
            log.warning("VOC evaluation: class %r has detections but no ground truth (AP %s)",
                        class_names[c], "0" if use_07_metric else "nan")
        table[c] = class_ap(det_image, det_scores, det_boxes, cls_gt, cls_diff,
                            iou_thresholds, use_07_metric)
    maps = table.mean(axis=0) if num_classes else np.zeros(len(iou_thresholds))
    thr = [float(t) for t in iou_thresholds]
    i50 = int(np.argmin(np.abs(np.asarray(thr) - 0.5)))
    return {
        "mAP50": float(maps[i50]),
        "mAP50_95": float(np.mean(maps)),
        "mAP_per_iou": {f"{t:.2f}": float(m) for t, m in zip(thr, maps, strict=True)},
        "per_class_AP50": {n: float(table[c, i50]) for c, n in enumerate(class_names)},
        "per_class_AP50_95": {n: float(table[c].mean()) for c, n in enumerate(class_names)},
        "num_detections": num_detections,
        "metric": "voc07_11point" if use_07_metric else "area",
    }
