"""Confusion matrix of detections against the ground truth (for `eval --plots`).

Per image, detections scoring at least `conf` are matched one-to-one to ground-truth boxes at
IoU > `iou` (the project's one IoU, `ops.boxes.box_iou`, xyxy), highest IoU first, as
Ultralytics' `ConfusionMatrix.process_batch`. matrix[predicted, true] counts the matched pairs;
the extra last row / column is background: matrix[C, t] a missed box of class t, matrix[p, C] a
detection of class p that matched no box. Ignored boxes (COCO crowd, flagged VOC difficult) and
the detections that match them are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolox_jax.ops.boxes import box_iou


def match_image(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, iou: float
) -> list[tuple[int, int]]:
    """det [D, 4], gt [G, 4] xyxy -> (det index, gt index) pairs, one-to-one, IoU > iou,
    greedily by descending IoU."""
    if not len(det_boxes) or not len(gt_boxes):
        return []
    ious = np.asarray(box_iou(det_boxes[:, None].astype(np.float64),
                              gt_boxes[None].astype(np.float64), xp=np))  # [D, G]
    d, g = np.nonzero(ious > iou)
    order = np.argsort(-ious[d, g], kind="stable")
    pairs, used_d, used_g = [], set(), set()
    for i in order:
        if d[i] in used_d or g[i] in used_g:
            continue
        used_d.add(int(d[i]))
        used_g.add(int(g[i]))
        pairs.append((int(d[i]), int(g[i])))
    return pairs


def confusion_matrix(
    detections: Sequence[Any],
    records: Sequence[Any],
    num_classes: int,
    conf: float = 0.25,
    iou: float = 0.5,
) -> np.ndarray:
    """-> int64 [C + 1, C + 1] (rows: predicted class, columns: true class; last: background)."""
    if len(detections) != len(records):
        raise ValueError(f"{len(detections)} detection sets for {len(records)} records")
    c = int(num_classes)
    m = np.zeros((c + 1, c + 1), np.int64)
    for det, rec in zip(detections, records, strict=True):
        keep = np.asarray(det.scores) >= conf
        boxes = np.asarray(det.boxes, np.float64).reshape(-1, 4)[keep]
        pred = np.asarray(det.classes, np.int64)[keep]
        ignore = np.asarray(rec.ignore, bool) | np.asarray(rec.difficult, bool)
        gt = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        true = np.asarray(rec.classes, np.int64)
        if ignore.any() and len(boxes):  # detections of ignored boxes count nowhere
            hit = {di for di, _ in match_image(boxes, gt[ignore], iou)}
            rest = np.array([i not in hit for i in range(len(boxes))], bool)
            boxes, pred = boxes[rest], pred[rest]
        gt, true = gt[~ignore], true[~ignore]
        pairs = match_image(boxes, gt, iou)
        for di, gi in pairs:
            m[pred[di], true[gi]] += 1
        matched_d = {di for di, _ in pairs}
        matched_g = {gi for _, gi in pairs}
        for di in range(len(boxes)):
            if di not in matched_d:
                m[pred[di], c] += 1
        for gi in range(len(gt)):
            if gi not in matched_g:
                m[c, true[gi]] += 1
    return m
