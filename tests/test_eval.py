"""Evaluation: the official VOC metric (hand cases and an independent re-derivation of the
official procedure), COCO results / COCOeval plumbing, the multi-host gather, the evaluator's
predictor cache, and the official YOLOX-Nano numbers on the shared COCO subset."""

from __future__ import annotations

import json
import threading

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.data.readers import ImageRecord, read_coco
from yolox_jax.eval.coco_eval import (
    STAT_KEYS,
    evaluate_coco,
    format_per_class_table,
    to_coco_results,
)
from yolox_jax.eval.evaluator import (
    Evaluator,
    evaluate_dataset,
    gather_detections,
    pack_detections,
    unpack_detections,
)
from yolox_jax.eval.voc_eval import IOU_THRESHOLDS, evaluate_voc
from yolox_jax.inference import ImageDetections, Predictor


def _dets(boxes, scores, classes=None) -> ImageDetections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    classes = np.zeros(len(scores), np.int32) if classes is None else np.asarray(classes, np.int32)
    return ImageDetections(boxes=boxes, scores=scores, classes=classes, obj=scores,
                           cls_conf=np.ones_like(scores), ratio=1.0, image_hw=(100, 100))


def _rec(boxes, classes=None, difficult=None, name="i") -> ImageRecord:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    k = len(boxes)
    return ImageRecord(
        image_path=f"{name}.jpg", image_id=name, height=100, width=100, boxes=boxes,
        classes=np.zeros(k, np.int64) if classes is None else np.asarray(classes, np.int64),
        ignore=np.zeros(k, bool),
        difficult=np.zeros(k, bool) if difficult is None else np.asarray(difficult, bool),
    )


# ------------------------------------------------------------------- VOC: a re-derivation
def reference_voc_ap(dets, records, cls, thr, use_07):
    """The official procedure step by step: write the class's results file lines (image order,
    then detection order; score %.3f, box + 1 %.1f), read them back, sort by -score, match
    greedily against the 1-based xml boxes (+1 px IoU, strict >, difficult neither TP nor FP),
    then the 11-point or the envelope-area AP."""
    lines = []
    for i, d in enumerate(dets):
        for k in range(len(d)):
            if d.classes[k] == cls:
                b = d.boxes[k] + np.float32(1)
                lines.append(f"{i} {d.scores[k]:.3f} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}")
    if not lines:
        return 0.0
    parsed = [ln.split(" ") for ln in lines]
    image = [int(p[0]) for p in parsed]
    conf = np.array([float(p[1]) for p in parsed])
    bb = np.array([[float(v) for v in p[2:]] for p in parsed])
    order = np.argsort(-conf)
    gt = {i: (r.boxes[r.classes == cls] + 1, r.difficult[r.classes == cls])
          for i, r in enumerate(records)}
    npos = sum(int((~d).sum()) for _, d in gt.values())
    used = {i: [False] * len(g[0]) for i, g in gt.items()}
    tp, fp = [], []
    for j in order:
        g, diff = gt[image[j]]
        best, arg = -np.inf, -1
        for m in range(len(g)):
            iw = max(min(g[m, 2], bb[j, 2]) - max(g[m, 0], bb[j, 0]) + 1.0, 0.0)
            ih = max(min(g[m, 3], bb[j, 3]) - max(g[m, 1], bb[j, 1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((bb[j, 2] - bb[j, 0] + 1.0) * (bb[j, 3] - bb[j, 1] + 1.0)
                     + (g[m, 2] - g[m, 0] + 1.0) * (g[m, 3] - g[m, 1] + 1.0) - inter)
            if inter / union > best:
                best, arg = inter / union, m
        hit = best > thr
        tp.append(1.0 if hit and not diff[arg] and not used[image[j]][arg] else 0.0)
        fp.append(1.0 if not hit or (not diff[arg] and used[image[j]][arg]) else 0.0)
        if hit and not diff[arg]:
            used[image[j]][arg] = True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) / 11
                   for t in np.arange(0.0, 1.1, 0.1))
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1)
               if mrec[i + 1] != mrec[i])


GT = [[10, 10, 49, 49]]


@pytest.mark.parametrize("case, dets, records, ap07, ap_area", [
    # perfect detections
    ("perfect", [_dets([[10, 10, 49, 49]], [0.9]), _dets([[0, 0, 9, 9], [50, 50, 80, 90]],
                                                        [0.8, 0.7])],
     [_rec(GT), _rec([[0, 0, 9, 9], [50, 50, 80, 90]])], 1.0, 1.0),
    # a false positive ranked above the true one: rec [0, 1], prec [0, 1/2]
    ("false_positive", [_dets([[60, 60, 90, 90], [10, 10, 49, 49]], [0.9, 0.8])], [_rec(GT)],
     0.5, 0.5),
    # a duplicate of box 1 between the two hits: rec [1/2, 1/2, 1], prec [1, 1/2, 2/3]
    ("duplicate", [_dets([[10, 10, 49, 49], [11, 10, 49, 49], [60, 60, 90, 90]],
                         [0.9, 0.8, 0.7])], [_rec([[10, 10, 49, 49], [60, 60, 90, 90]])],
     (6 + 5 * 2 / 3) / 11, 0.5 + 0.5 * 2 / 3),
    # the best-scored detection hits a difficult box: neither TP nor FP; npos counts 1 box
    ("difficult", [_dets([[60, 60, 90, 90], [10, 10, 49, 49]], [0.9, 0.8])],
     [_rec([[10, 10, 49, 49], [60, 60, 90, 90]], difficult=[False, True])], 1.0, 1.0),
    # 11-point != area: TP, FP, TP, one box missed: rec [1/3, 1/3, 2/3], prec [1, 1/2, 2/3]
    ("eleven_vs_area", [_dets([[10, 10, 49, 49], [70, 0, 99, 9], [60, 60, 90, 90]],
                              [0.9, 0.8, 0.7])],
     [_rec([[10, 10, 49, 49], [60, 60, 90, 90], [0, 70, 20, 99]])], 6 / 11, 1 / 3 + 2 / 9),
    ("no_detections", [_dets([], [])], [_rec(GT)], 0.0, 0.0),
])
def test_voc_hand_cases(case, dets, records, ap07, ap_area):
    for use_07, want in ((True, ap07), (False, ap_area)):
        got = evaluate_voc(dets, records, ["thing"], use_07_metric=use_07,
                           iou_thresholds=(0.5,))
        assert got["mAP50"] == pytest.approx(want, abs=1e-12), (case, use_07)
        ref = reference_voc_ap(dets, records, 0, 0.5, use_07)
        assert ref == pytest.approx(want, abs=1e-12), (case, use_07)


def test_voc_plus_one_pixel_convention_and_iou_sweep():
    # xml box 1..10 (record 0..9), detection shifted by 3 px. With +1: inter 7 * 10 = 70,
    # union 130, IoU 0.538 > 0.5; without it 54 / 108 = 0.5 exactly, not > 0.5.
    got = evaluate_voc([_dets([[3, 0, 12, 9]], [0.9])], [_rec([[0, 0, 9, 9]])], ["thing"])
    assert got["metric"] == "voc07_11point"
    assert list(got["mAP_per_iou"]) == [f"{t:.2f}" for t in np.arange(0.5, 0.951, 0.05)]
    assert got["mAP_per_iou"]["0.50"] == pytest.approx(1.0) and got["mAP_per_iou"]["0.55"] == 0
    assert got["mAP50"] == pytest.approx(1.0) and got["mAP50_95"] == pytest.approx(0.1)


def test_voc_class_without_ground_truth_is_as_official():
    dets = [_dets([[10, 10, 49, 49], [0, 0, 5, 5]], [0.9, 0.5], classes=[0, 1])]
    records = [_rec(GT)]
    v07 = evaluate_voc(dets, records, ["a", "b"], iou_thresholds=(0.5,))
    assert v07["per_class_AP50"] == pytest.approx({"a": 1.0, "b": 0.0})
    assert v07["mAP50"] == pytest.approx(0.5)
    area = evaluate_voc(dets, records, ["a", "b"], use_07_metric=False, iou_thresholds=(0.5,))
    assert np.isnan(area["per_class_AP50"]["b"])  # 0 / 0 recall, as the official


def test_voc_matches_the_official_procedure_on_random_cases():
    rng = np.random.default_rng(0)
    dets, records = [], []
    for i in range(6):
        k = int(rng.integers(0, 5))
        xy = rng.integers(0, 60, (k, 2))
        gt = np.concatenate([xy, xy + rng.integers(5, 40, (k, 2))], axis=1).astype(np.float64)
        cls = rng.integers(0, 3, k)
        records.append(_rec(gt, cls, rng.random(k) < 0.2, name=f"im{i}"))
        jit = gt + rng.normal(0, 3, gt.shape)
        fp = rng.uniform(0, 90, (3, 4))
        fp[:, 2:] = fp[:, :2] + rng.uniform(3, 30, (3, 2))
        boxes = np.concatenate([jit, jit[: k // 2] + 1.5, fp]).astype(np.float32)
        classes = np.concatenate([cls, cls[: k // 2], rng.integers(0, 3, 3)])
        scores = np.round(rng.uniform(0.01, 1, len(boxes)), 3 if i % 2 else 5)  # ties
        o = np.argsort(-scores, kind="stable")
        dets.append(_dets(boxes[o], scores[o], classes[o]))
    for use_07 in (True, False):
        got = evaluate_voc(dets, records, ["a", "b", "c"], use_07_metric=use_07)
        ref = np.array([[reference_voc_ap(dets, records, c, t, use_07) for t in IOU_THRESHOLDS]
                        for c in range(3)])
        np.testing.assert_allclose(list(got["mAP_per_iou"].values()), ref.mean(0), atol=1e-12)
        np.testing.assert_allclose(got["mAP50_95"], ref.mean(), atol=1e-12)
        np.testing.assert_allclose(list(got["per_class_AP50"].values()), ref[:, 0], atol=1e-12)
        assert 0.2 < got["mAP50"] < 1.0  # the case is not degenerate


# ------------------------------------------------------------------------------------ COCO
def _coco_gt():
    images = [{"id": 5, "file_name": "a.jpg", "width": 200, "height": 150},
              {"id": 2, "file_name": "b.jpg", "width": 200, "height": 150}]
    anns = [
        {"id": 1, "image_id": 5, "category_id": 18, "bbox": [10, 20, 60, 50], "area": 3000,
         "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 1, "bbox": [100, 30, 80, 100], "area": 8000,
         "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 100, 120], "area": 12000,
         "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [110, 5, 80, 80], "area": 6400,
         "iscrowd": 1},
    ]
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_coco_results_format():
    det = _dets([[10, 20, 70, 70], [1.5, 2.25, 3.0, 9.0]], [0.75, 0.5], classes=[2, 0])
    out = to_coco_results([det, _dets([], [])], [5, 2], (1, 3, 18))
    assert out == [
        {"image_id": 5, "category_id": 18, "bbox": [10.0, 20.0, 60.0, 50.0], "score": 0.75},
        {"image_id": 5, "category_id": 1, "bbox": [1.5, 2.25, 1.5, 6.75], "score": 0.5},
    ]
    with pytest.raises(ValueError, match="class index 2 outside the 2 categories"):
        to_coco_results([det], [5], (1, 3))


def test_coco_perfect_detections_and_zero_detections():
    gt = _coco_gt()
    dets = [_dets([[10, 20, 70, 70], [100, 30, 180, 130]], [0.9, 0.8], classes=[2, 0]),
            _dets([[5, 5, 105, 125]], [0.7], classes=[0])]
    stats = evaluate_coco(gt, to_coco_results(dets, [5, 2], (1, 3, 18)))
    assert stats["AP"] == 1.0 and stats["AP50"] == 1.0 and stats["AR100"] == 1.0
    assert stats["APs"] == -1.0  # no small ground truth: COCOeval's -1
    assert stats["per_class_AP"]["person"] == pytest.approx(100.0)
    assert stats["per_class_AP"]["dog"] == pytest.approx(100.0)
    assert np.isnan(stats["per_class_AP"]["car"])  # no ground truth: nan, as the official table
    assert list(stats["per_class_AP"]) == ["person", "car", "dog"]  # sorted category ids
    assert stats["num_detections"] == 3
    zero = evaluate_coco(gt, [])
    assert all(zero[k] == 0.0 for k in STAT_KEYS) and "no detections" in zero["note"]


def test_per_class_table_is_the_official_layout():
    fixture = json.loads(need_shared("fixtures/eval/yolox_nano_coco_subset.json").read_text())
    text = fixture["primary"]["official_info_text"]
    official = text.split("per class AP:\n")[1].split("\nper class AR:")[0].rstrip("\n")
    assert format_per_class_table(fixture["primary"]["per_class_AP"], "AP") == official


# ------------------------------------------------------------------------------- evaluator
class FakeAllgather:
    """process_allgather for n threads standing in for n processes (stacks along axis 0)."""

    def __init__(self, n: int) -> None:
        self.n, self.slots = n, [None] * n
        self.barrier = threading.Barrier(n, timeout=120)

    def for_rank(self, rank: int):
        def gather(tree):
            self.slots[rank] = tree
            self.barrier.wait()
            out = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *self.slots)
            self.barrier.wait()
            return out

        return gather


def test_gather_round_trip_over_uneven_processes():
    rng = np.random.default_rng(1)
    dets = []
    for i in range(5):
        k = [3, 0, 7, 1, 2][i]
        dets.append(ImageDetections(
            boxes=rng.random((k, 4), np.float32), scores=rng.random(k, np.float32),
            classes=rng.integers(0, 80, k).astype(np.int32), obj=rng.random(k, np.float32),
            cls_conf=rng.random(k, np.float32), ratio=416 / 640, image_hw=(480, 640),
            num_candidates=k + 5, num_kept=k))
    fake, out = FakeAllgather(2), [None, None]

    def run(rank):
        idx = list(range(rank, 5, 2))
        packed = gather_detections(pack_detections([dets[i] for i in idx], idx),
                                   fake.for_rank(rank))
        out[rank] = unpack_detections(packed, 5, (416, 416))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in out:
        for a, b in zip(got, dets, strict=True):
            for f in ("boxes", "scores", "classes", "obj", "cls_conf"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
            assert (a.ratio, a.image_hw, a.num_candidates, a.num_kept) == (
                b.ratio, b.image_hw, b.num_candidates, b.num_kept)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A fresh YOLOX-Nano at 64 px and a 3-image COCO dataset of noise images."""
    from yolox_jax.config import variant_config
    from yolox_jax.models.yolox import build_model

    root = tmp_path_factory.mktemp("coco")
    gt = _coco_gt()
    (root / "annotations").mkdir()
    gt["images"].append({"id": 9, "file_name": "c.jpg", "width": 90, "height": 120})
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))
    rng = np.random.default_rng(0)
    for im in gt["images"]:
        path = root / "val2017" / im["file_name"]
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (im["height"], im["width"], 3), np.uint8))
    config = variant_config("yolox_nano")
    config.model.num_classes = 3
    config.data.update(data_dir=str(root), val_ann="instances_val2017.json",
                       val_images="val2017", test_size=(64, 64))
    config.test.update(conf=1e-3, nms=0.65)
    model = build_model(config)
    # random weights from the shapes (no init compilation): kernels N(0, 1 / fan_in), BN identity
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            return rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(
                np.prod(leaf.shape[:-1]))
        return (np.ones if ("scale" in name or "var" in name) else np.zeros)(
            leaf.shape, np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    for level in range(3):  # objectness 0.5 everywhere: every anchor is a candidate
        obj = variables["params"]["head"][f"obj_preds.{level}"]
        obj["kernel"] = np.zeros_like(obj["kernel"])
    return model, variables, config


def test_evaluator_cache_swaps_weights_without_recompiling(tiny):
    model, variables, config = tiny
    evaluator = Evaluator(model, config, batch_size=2, progress=False)
    first = evaluator.evaluate(variables)
    predictor = evaluator.predictor
    assert predictor.cache_size() == 1  # batches of 2 and 1 share one bucket
    other = jax.tree.map(lambda x: x, variables)
    head = other["params"]["head"]
    head["obj_preds.0"] = {**head["obj_preds.0"], "bias": head["obj_preds.0"]["bias"] - 9.0}
    second = evaluator.evaluate(other)
    again = evaluator.evaluate(variables)
    assert evaluator.predictor is predictor and predictor.cache_size() == 1
    assert second["num_detections"] < first["num_detections"]  # stride 8 anchors now < conf
    for k in (*STAT_KEYS, "num_detections"):
        assert again[k] == first[k]
    assert first["num_images"] == 3 and "inference_ms" in first


def test_evaluator_matches_the_predictor_and_multi_process_split(tiny):
    model, variables, config = tiny
    info = read_coco(config.data.data_dir, config.data.val_ann)
    predictor = Predictor(model, variables, input_size=(64, 64), conf=1e-3, nms=0.65,
                          pre_nms_topk=None, max_det=None, batch_buckets=(2,))
    single = evaluate_dataset(predictor, info, batch_size=2, progress=False)
    direct = predictor([r.image_path for r in info.records])
    for a, b in zip(single.detections, direct, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
    fake, out = FakeAllgather(2), [None, None]

    def run(rank):
        out[rank] = evaluate_dataset(predictor, info, batch_size=2, progress=False,
                                     process_index=rank, process_count=2,
                                     gather_fn=fake.for_rank(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in out:
        assert res is not None
        for k in (*STAT_KEYS, "num_detections"):
            assert res.stats[k] == single.stats[k]
        for a, b in zip(res.detections, single.detections, strict=True):
            np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.mark.slow
def test_official_nano_numbers_on_the_coco_subset(nano_coco_subset_stats):
    """The official COCOEvaluator numbers (fixtures/eval): conf 0.001, NMS 0.65, 416, every
    anchor into NMS (the evaluation is conftest's `nano_coco_subset_stats`, ~25 s on 2 cores)."""
    fixture = json.loads(need_shared("fixtures/eval/yolox_nano_coco_subset.json").read_text())
    official = fixture["primary"]
    stats = nano_coco_subset_stats
    assert stats["num_detections"] == official["num_detections"] == 32574
    for key, want in zip(STAT_KEYS, official["stats"], strict=True):
        assert abs(stats[key] - want) < 1e-3, (key, stats[key], want)
    text = official["official_info_text"]
    for name, header in (("AP", "AP"), ("AR", "AR")):
        table = text.split(f"per class {name}:\n")[1].split("\nper class")[0].rstrip("\n")
        assert format_per_class_table(stats[f"per_class_{name}"], header) == table
