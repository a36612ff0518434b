"""COCO box evaluation: detections -> COCO results json, pycocotools COCOeval, per-class tables.

As the official `COCOEvaluator`: boxes xyxy (original pixels, not clipped) -> xywh in float32
(`xyxy2xywh`), score = obj * cls_conf, category id = `category_ids[class]` (the json's ids sorted);
the 12 `COCOeval.stats` and the per-class AP (AR) = mean of `precision[:, :, k, 0, -1]`
(`recall[:, k, 0, -1]`) over entries > -1, times 100 (`per_class_AP_table`). Plain pycocotools
COCOeval gives the official fast evaluator's numbers (to 6e-17 on the shared fixtures).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STAT_KEYS: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def load_coco_gt(ann: Any) -> Any:
    """A pycocotools COCO from a json path (or URL), a parsed json dict, or a COCO (as is)."""
    from pycocotools.coco import COCO

    if isinstance(ann, COCO):
        return ann
    if isinstance(ann, (str, os.PathLike)):
        from yolox_jax.data import paths

        if paths.is_url(ann) or os.fspath(ann).startswith("file://"):  # gs://, file://, ...
            import json

            ann = json.loads(paths.read_text(ann))
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(ann, (str, os.PathLike)):
            return COCO(os.fspath(ann))
        coco = COCO()
        coco.dataset = dict(ann)
        coco.createIndex()
    return coco


def to_coco_results(
    detections: Sequence[Any], image_ids: Sequence[int], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Per-image detections (`ImageDetections`: boxes [K, 4] xyxy, scores [K], classes [K]) ->
    the COCO results list [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]."""
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detection sets for {len(image_ids)} image ids")
    cat = np.asarray(category_ids, np.int64)
    out: list[dict[str, Any]] = []
    for det, iid in zip(detections, image_ids, strict=True):
        boxes = np.asarray(det.boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            continue
        cls = np.asarray(det.classes, np.int64)
        if cls.min() < 0 or cls.max() >= len(cat):
            raise ValueError(
                f"image {iid}: class index {int(cls.max())} outside the {len(cat)} categories"
            )
        xywh = boxes.copy()
        xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]  # float32, as the official xyxy2xywh
        scores = np.asarray(det.scores, np.float32).tolist()
        labels = cat[cls].tolist()
        for b, s, c in zip(xywh.tolist(), scores, labels, strict=True):
            out.append({"image_id": int(iid), "category_id": int(c), "bbox": b, "score": s})
    return out


def per_class_values(coco_eval: Any, class_names: Sequence[str]) -> tuple[dict, dict]:
    """(per-class AP, per-class AR) in percent, as the official `per_class_AP/AR_table`."""
    precision, recall = coco_eval.eval["precision"], coco_eval.eval["recall"]
    if precision.shape[2] != len(class_names):
        raise ValueError(
            f"{len(class_names)} class names for {precision.shape[2]} evaluated categories"
        )
    ap, ar = {}, {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        ap[name] = float(np.mean(p) * 100) if p.size else float("nan")
        r = recall[:, k, 0, -1]
        r = r[r > -1]
        ar[name] = float(np.mean(r) * 100) if r.size else float("nan")
    return ap, ar


def format_per_class_table(
    values: Mapping[str, float], header: str = "AP", columns: int = 6
) -> str:
    """A markdown (pipe) table of name / value pairs, `columns // 2` pairs per row, as the
    official tabulate layout (floats with 3 decimals)."""
    pairs = [x for kv in values.items() for x in kv]
    num_cols = min(columns, len(pairs))
    if num_cols == 0:
        return ""
    rows = list(itertools.zip_longest(*[pairs[i::num_cols] for i in range(num_cols)]))
    cells = [[("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in r]
             for r in rows]
    headers = ["class", header] * (num_cols // 2)
    widths = [max(len(headers[j]), *(len(r[j]) for r in cells)) for j in range(num_cols)]

    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths, strict=True)) + " |"

    sep = "|" + "|".join(":" + "-" * (w + 1) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def scoring_inputs(info: Any, detections: Sequence[Any], coco_gt: Any = None
                   ) -> tuple[Any, list[dict[str, Any]], list[int]]:
    """A COCO DatasetInfo and one detection set per record -> (ground truth, results list,
    image ids to score) for `evaluate_coco` / `coco_pr_curves`. coco_gt: the ground truth to
    use (default: loaded from `info.source`)."""
    gt = load_coco_gt(coco_gt if coco_gt is not None else info.source)
    image_ids = [r.image_id for r in info.records]
    return gt, to_coco_results(detections, image_ids, info.category_ids), image_ids


def evaluate_coco(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """COCOeval (bbox) of `results` against `coco_gt` (COCO, json path or dict).

    Returns the 12 stats under `STAT_KEYS`, `per_class_AP` / `per_class_AR` (name -> percent),
    `num_detections` and `summary` (the COCOeval text). image_ids: evaluate only those images
    (default: every image of the ground truth, as the official). Zero detections: every number
    0.0 and a `note` (pycocotools cannot load an empty result list; the official returns 0 too).
    """
    gt = load_coco_gt(coco_gt)
    cat_ids = sorted(gt.getCatIds())
    names = list(class_names) if class_names is not None else [
        gt.cats[c]["name"] for c in cat_ids
    ]
    if not results:
        log.warning("COCO evaluation: no detections; every AP / AR is 0")
        return {**{k: 0.0 for k in STAT_KEYS}, "per_class_AP": {n: 0.0 for n in names},
                "per_class_AR": {n: 0.0 for n in names}, "num_detections": 0,
                "summary": "no detections", "note": "no detections: every AP / AR is 0"}
    ev = run_cocoeval(gt, results, image_ids)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        ev.summarize()
    ap, ar = per_class_values(ev, names)
    stats = {k: float(v) for k, v in zip(STAT_KEYS, ev.stats, strict=True)}
    return {**stats, "per_class_AP": ap, "per_class_AR": ar, "num_detections": len(results),
            "summary": text.getvalue()}


def run_cocoeval(coco_gt: Any, results: Sequence[Mapping[str, Any]],
                 image_ids: Sequence[int] | None = None) -> Any:
    """COCOeval (bbox) evaluated and accumulated (quietly); `results` must be non-empty."""
    from pycocotools.cocoeval import COCOeval

    gt = load_coco_gt(coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(r) for r in results])  # loadRes adds fields: copies, not ours
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
    return ev


def coco_pr_curves(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    image_ids: Sequence[int] | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Class name -> (recall [101], precision [101], AP) at one IoU threshold, from COCOeval's
    accumulated `precision[T, R, K, area all, maxDets 100]` (undefined points -> 0)."""
    recall = np.linspace(0.0, 1.0, 101)
    if not results:
        return {n: (recall, np.zeros_like(recall), 0.0) for n in class_names}
    ev = run_cocoeval(coco_gt, results, image_ids)
    t = int(np.argmin(np.abs(ev.params.iouThrs - iou_threshold)))
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    if precision.shape[2] != len(class_names):
        raise ValueError(
            f"{len(class_names)} class names for {precision.shape[2]} evaluated categories"
        )
    out = {}
    for k, name in enumerate(class_names):
        p = precision[t, :, k, 0, -1]
        ap = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
        out[name] = (np.asarray(ev.params.recThrs), np.where(p > -1, p, 0.0), ap)
    return out


def coco_ground_truth(info: Any) -> dict[str, Any]:
    """A read dataset (readers.DatasetInfo) -> a COCO detection json (dict) with image ids
    0..N-1 in record order and category ids `info.category_ids`."""
    from yolox_jax.data.writers import coco_json

    return coco_json(info, image_ids=range(len(info.records)), category_ids=info.category_ids)


def for_scoring(info: Any) -> tuple[Any, Any]:
    """(DatasetInfo the evaluator scores, pycocotools COCO or None).

    COCO / VOC: as read (the evaluator loads a COCO json itself). YOLO (scored as COCO, the
    metric YOLO users compare with): a COCO view of the records (image ids 0..N-1) and its
    ground truth built in memory, so `evaluate_dataset(predictor, view, coco_gt=gt)` gives
    COCOeval numbers.
    """
    import dataclasses

    if info.format != "yolo":
        return info, None
    records = [dataclasses.replace(r, image_id=i) for i, r in enumerate(info.records)]
    view = dataclasses.replace(info, records=records, format="coco")
    return view, load_coco_gt(coco_ground_truth(view))
