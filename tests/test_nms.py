"""NMS and postprocess parity: torchvision's CPU NMS semantics and the official YOLOX `postprocess`.

The references below are NumPy transcriptions (float32, one rounding per operation, as the C++ code
does it) of torchvision's CPU `nms` kernel, its Python `batched_nms` (both dispatch paths), and
the official `yolox.utils.boxes.postprocess`; the fixture test checks against the official torch
output on the dog image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.ops.nms import nms_mask, nms_threshold_f32, pairwise_iou
from yolox_jax.ops.postprocess import (
    Detections,
    _postprocess_jit,
    detections_to_rows,
    postprocess,
)

F32 = np.float32


# ----------------------------------------------------------------------------- references
def nms_reference_numpy(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    """torchvision CPU `nms`: kept indices [M] int64 in processing (score-descending) order."""
    boxes = boxes.astype(F32)
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores.astype(F32), kind="stable")  # torch sort(stable, descending)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        rest = rest[~suppressed[rest]]
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)  # float32
        suppressed[rest[ovr.astype(np.float64) > thr]] = True  # float vs C++ double
    return np.asarray(keep, np.int64)


def batched_nms_reference(
    boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, thr: float, path: str | None = None
) -> np.ndarray:
    """torchvision `batched_nms` on CPU; `path` forces "vanilla" or "trick" (default: its rule)."""
    if path is None:
        path = "vanilla" if boxes.size > 4000 else "trick"
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    if path == "trick":
        max_coordinate = boxes.max()
        offsets = idxs.astype(F32) * (max_coordinate + F32(1))
        return nms_reference_numpy(boxes + offsets[:, None], scores, thr)
    keep_mask = np.zeros(len(boxes), bool)
    for c in np.unique(idxs):
        ci = np.nonzero(idxs == c)[0]
        keep_mask[ci[nms_reference_numpy(boxes[ci], scores[ci], thr)]] = True
    kept = np.nonzero(keep_mask)[0]
    return kept[np.argsort(-scores[kept], kind="stable")]


def postprocess_reference(
    pred: np.ndarray, conf: float, thr: float, agnostic: bool, path: str | None = None
) -> list[np.ndarray]:
    """The official `postprocess` in NumPy: per image [K, 7] rows (x1,y1,x2,y2,obj,cls_conf,cls)."""
    pred = pred.astype(F32).copy()
    cx, cy, w, h = (pred[..., i].copy() for i in range(4))
    pred[..., 0], pred[..., 1] = cx - w / 2, cy - h / 2
    pred[..., 2], pred[..., 3] = cx + w / 2, cy + h / 2
    out = []
    for img in pred:
        cls_conf = img[:, 5:].max(1)
        cls_pred = img[:, 5:].argmax(1)
        mask = img[:, 4] * cls_conf >= conf  # float32 compare, like torch with a Python float
        det = np.concatenate([img[:, :5], cls_conf[:, None], cls_pred[:, None].astype(F32)], 1)
        det = det[mask]
        scores = det[:, 4] * det[:, 5]
        if agnostic:
            keep = nms_reference_numpy(det[:, :4], scores, thr)
        else:
            keep = batched_nms_reference(det[:, :4], scores, det[:, 6], thr, path)
        out.append(det[keep])
    return out


def _pairwise_iou_numpy(b: np.ndarray) -> np.ndarray:
    a, c = b[:, None], b[None]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.maximum(np.minimum(a[..., 2], c[..., 2]) - np.maximum(a[..., 0], c[..., 0]), F32(0))
    h = np.maximum(np.minimum(a[..., 3], c[..., 3]) - np.maximum(a[..., 1], c[..., 1]), F32(0))
    inter = w * h
    return inter / (areas[:, None] + areas[None] - inter)


def _keep_set_reference(boxes, scores, valid, thr, classes) -> np.ndarray:
    """Keep mask [K] of the reference on the valid entries (per class when classes is given)."""
    vi = np.nonzero(valid)[0]
    keep = np.zeros(len(boxes), bool)
    if classes is None:
        keep[vi[nms_reference_numpy(boxes[vi], scores[vi], thr)]] = True
    else:
        keep[vi[batched_nms_reference(boxes[vi], scores[vi], classes[vi], thr, "vanilla")]] = True
    return keep


# ----------------------------------------------------------------------------- random cases
K = 48


def _grid_case(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Integer boxes on a small grid: IoUs exactly 1/3, 1/2, 3/5, ...; tied scores, duplicates."""
    xy = rng.integers(0, 6, (K, 2))
    wh = rng.integers(1, 5, (K, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(F32)
    dup = rng.integers(0, K, K // 4)
    boxes[rng.integers(0, K, K // 4)] = boxes[dup]
    scores = rng.choice(np.array([0.2, 0.5, 0.5, 0.7, 0.9], F32), K)
    thr = float(rng.choice([1 / 3, 0.5, 0.6, 0.45, 0.65, 0.25, 0.0, 2 / 3, 0.7, 0.2]))
    return boxes, scores, thr


def _float_case(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Float boxes around a few centres; the threshold is one pair's exact IoU (or a neighbour)."""
    ctr = rng.uniform(20, 300, (4, 2))[rng.integers(0, 4, K)]
    c = ctr + rng.normal(0, 6, (K, 2))
    wh = rng.uniform(20, 60, (K, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(F32)
    scores = rng.uniform(0, 1, K).astype(F32)
    scores[rng.integers(0, K, K // 3)] = scores[0]
    ious = _pairwise_iou_numpy(boxes)
    cand = ious[(ious > 0.2) & (ious < 0.95)]
    t = F32(rng.choice(cand)) if len(cand) else F32(0.5)
    t = [t, np.nextafter(t, F32(0)), np.nextafter(t, F32(1))][rng.integers(0, 3)]
    return boxes, scores, float(t)


@pytest.fixture(scope="module")
def random_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    cases = [(_grid_case if i % 2 == 0 else _float_case)(rng) for i in range(240)]
    boxes = np.stack([c[0] for c in cases])
    scores = np.stack([c[1] for c in cases])
    thr = np.array([c[2] for c in cases])
    valid = rng.random((len(cases), K)) < 0.85
    classes = rng.integers(0, 3, (len(cases), K)).astype(np.int32)
    return dict(boxes=boxes, scores=scores, thr=thr, valid=valid, classes=classes)


@jax.jit
def _batched_nms_masks(boxes, scores, valid, thr, classes):
    agnostic = jax.vmap(lambda b, s, v, t: nms_mask(b, s, v, t))(boxes, scores, valid, thr)
    aware = jax.vmap(nms_mask)(boxes, scores, valid, thr, classes)
    return agnostic, aware


def test_pairwise_iou_bitwise_matches_kernel_order():
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 416, (300, 2)).astype(F32)
    wh = rng.uniform(1, 200, (300, 2)).astype(F32)
    b = np.concatenate([c - wh / 2, c + wh / 2], 1)
    ref = _pairwise_iou_numpy(b)
    np.testing.assert_array_equal(np.asarray(jax.jit(pairwise_iou)(b)), ref)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(pairwise_iou))(b[None]))[0], ref)


def test_nms_mask_matches_torchvision_reference(random_cases):
    rc = random_cases
    thr32 = np.array([nms_threshold_f32(t) for t in rc["thr"]], F32)  # traced thresholds
    agnostic, aware = jax.device_get(
        _batched_nms_masks(rc["boxes"], rc["scores"], rc["valid"], thr32, rc["classes"])
    )
    n_suppressed = 0
    for i in range(len(rc["thr"])):
        args = (rc["boxes"][i], rc["scores"][i], rc["valid"][i], rc["thr"][i])
        ref_a = _keep_set_reference(*args, None)
        ref_c = _keep_set_reference(*args, rc["classes"][i])
        np.testing.assert_array_equal(agnostic[i], ref_a, err_msg=f"agnostic case {i}")
        np.testing.assert_array_equal(aware[i], ref_c, err_msg=f"class-aware case {i}")
        n_suppressed += int(rc["valid"][i].sum() - ref_a.sum())
    assert n_suppressed > 1000  # the cases really exercise suppression


@pytest.mark.parametrize(
    "x2_small, thr, suppressed",
    [
        # [0,0,2,1] vs [1,0,3,1]: IoU = 1/3 in float32 = 0.33333334 > 1/3 (double) -> suppressed
        (None, 1 / 3, True),
        # [0,0,3,1] inside [0,0,5,1]: IoU float32(0.6) = 0.6000000238 > 0.6 -> suppressed
        (3, 0.6, True),
        (3, nms_threshold_f32(0.6), True),  # the float32 form of 0.6 to use when tracing
        (5, 0.5, False),  # [0,0,5,1] vs [0,0,10,1]: IoU exactly 0.5, not > 0.5
        (9, 0.45, False),  # 9/20: float32(0.45) < 0.45
        (13, 0.65, False),  # 13/20: float32(0.65) < 0.65
    ],
)
def test_nms_iou_equal_to_threshold(x2_small, thr, suppressed):
    if x2_small is None:
        boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], F32)
    else:
        big = {3: 5, 5: 10, 9: 20, 13: 20}[x2_small]
        boxes = np.array([[0, 0, big, 1], [0, 0, x2_small, 1]], F32)
    scores = np.array([0.9, 0.8], F32)
    ref = nms_reference_numpy(boxes, scores, float(thr))
    assert (len(ref) == 1) == suppressed
    # a Python threshold must stay static under jit: traced, 1/3 would become float32(1/3)
    for fn in (nms_mask, jax.jit(nms_mask, static_argnames="iou_threshold")):
        keep = np.asarray(fn(boxes, scores, np.ones(2, bool), thr))
        np.testing.assert_array_equal(keep, [True, not suppressed])


def test_nms_mask_unsorted_input_and_ties_keep_first():
    # three identical boxes with the same score: the first in input order survives (stable sort)
    boxes = np.array([[0, 0, 4, 4], [10, 10, 12, 12], [0, 0, 4, 4], [0, 0, 4, 4]], F32)
    scores = np.array([0.1, 0.3, 0.5, 0.5], F32)
    keep = np.asarray(nms_mask(boxes, scores, np.ones(4, bool), 0.5))
    np.testing.assert_array_equal(keep, [False, True, True, False])
    keep = np.asarray(nms_mask(boxes, scores, np.array([True, True, False, True]), 0.5))
    np.testing.assert_array_equal(keep, [False, True, False, True])
    with pytest.raises(ValueError, match=r"boxes must be \[K, 4\]"):
        nms_mask(boxes[:, :3], scores, np.ones(4, bool), 0.5)


# ----------------------------------------------------------------------------- postprocess
def _assert_rows_equal(rows: np.ndarray, ref: np.ndarray, what: str, rtol: float = 0.0):
    assert rows.shape == ref.shape, f"{what}: {rows.shape[0]} detections, official {ref.shape[0]}"
    np.testing.assert_array_equal(rows[:, 6], ref[:, 6], err_msg=f"{what}: classes / order")
    np.testing.assert_allclose(rows[:, :6], ref[:, :6], rtol=rtol, atol=0, err_msg=what)


@pytest.mark.parametrize(
    "tag, conf, thr, agnostic, count",
    [
        ("c0.001_n0.65", 0.001, 0.65, False, 134),
        ("c0.3_n0.45", 0.3, 0.45, False, 4),
        ("c0.3_n0.45_agnostic", 0.3, 0.45, True, 3),
    ],
)
def test_postprocess_matches_official_dog(tag, conf, thr, agnostic, count):
    data = np.load(need_shared("fixtures/real/dog.npz"))
    official = data[f"post_{tag}"]
    assert official.shape == (count, 7)
    det = postprocess(data["decoded"], conf, thr, class_agnostic=agnostic)
    rows = detections_to_rows(det)[0]
    _assert_rows_equal(rows, official, f"dog {tag}", rtol=1e-6)
    assert int(det.num_valid[0]) == int(det.num_kept[0]) == count
    assert int(det.num_candidates[0]) <= 1000  # the official path is reproduced without a cut
    assert not np.asarray(det.boxes[0, count:]).any()  # zero padding


def _synthetic_decoded(rng: np.random.Generator, n: int, c: int, pass_frac: list[float]):
    """[B, n, 5 + c]: clustered boxes, tied scores; some anchors per image with high obj."""
    b = len(pass_frac)
    x = np.zeros((b, n, 5 + c), F32)
    which = np.arange(b)[:, None], rng.integers(0, 12, (b, n))
    x[..., :2] = rng.uniform(10, 200, (b, 12, 2))[which] + rng.normal(0, 3, (b, n, 2))
    x[..., 2:4] = rng.uniform(8, 60, (b, 12, 2))[which] * rng.uniform(0.85, 1.15, (b, n, 2))
    x[..., :4] = np.round(x[..., :4] * 4) / 4  # quarter pixels: exact IoU ties happen
    hi = rng.random((b, n)) < np.asarray(pass_frac)[:, None]
    x[..., 4] = np.where(hi, rng.choice(np.array([0.5, 0.75, 0.9], F32), (b, n)), 0.01)
    x[..., 5:] = rng.choice(np.array([0.1, 0.4, 0.6, 0.8], F32), (b, n, c))
    x[..., 5:][rng.random((b, n)) < 0.1] = 0.8  # all classes tie: argmax takes the first
    return x


def test_postprocess_matches_reference_both_batched_nms_paths():
    rng = np.random.default_rng(7)
    # candidates per image: ~1150 (vanilla path), ~540 and ~25 (coordinate trick), 0 (empty)
    x = _synthetic_decoded(rng, 1200, 4, [0.96, 0.45, 0.02, 0.0])
    conf = 0.3
    n_path_sensitive = 0
    thresholds = [0.65, 0.45, 0.5]
    # thresholds equal to an IoU in the trick's shifted coordinates make the two paths disagree
    ref_img = postprocess_reference(x[1:2], conf, 1.0, False)[0]  # everything kept
    shifted = ref_img[:, :4] + (ref_img[:, 6] * (ref_img[:, :4].max() + F32(1)))[:, None]
    for j in range(1, len(ref_img)):
        if len(thresholds) >= 9:
            break
        if ref_img[j, 6] == ref_img[0, 6]:
            iou = _pairwise_iou_numpy(shifted[[0, j]])[0, 1]
            if 0.3 < iou < 0.9:
                thresholds.append(float(iou))
    assert len(thresholds) >= 6
    for thr in thresholds:
        for agnostic in (False, True):
            det = postprocess(x, conf, thr, class_agnostic=agnostic, pre_nms_topk=1200,
                              max_det=1200)
            ref = postprocess_reference(x, conf, thr, agnostic)
            rows = detections_to_rows(det)
            for b in range(len(x)):
                _assert_rows_equal(rows[b], ref[b], f"image {b} thr {thr} agnostic {agnostic}")
            np.testing.assert_array_equal(det.num_kept, [len(r) for r in ref])
        other = postprocess_reference(x[1:2], conf, thr, False, path="vanilla")[0]
        n_path_sensitive += not np.array_equal(other, ref[1])
    counts = np.asarray(det.num_candidates)
    assert counts[0] > 1000 and 200 < counts[1] <= 1000 and 0 < counts[2] and counts[3] == 0
    assert n_path_sensitive >= 1  # the test can tell the two paths apart


def test_postprocess_reports_topk_and_max_det_cuts():
    rng = np.random.default_rng(3)
    x = _synthetic_decoded(rng, 40, 3, [1.0])
    x[..., :2] = rng.uniform(0, 400, (1, 40, 2))  # spread out: few suppressions
    det = postprocess(x, 0.05, 0.5, class_agnostic=True, pre_nms_topk=10, max_det=4)
    assert int(det.num_candidates[0]) == 40  # > pre_nms_topk: reported
    scores = x[0, :, 4] * x[0, :, 5:].max(1)
    top = np.sort(np.argsort(-scores, kind="stable")[:10])  # the 10 best, in anchor order
    ref = postprocess_reference(x[:, top], 0.05, 0.5, True)[0]
    assert int(det.num_kept[0]) == len(ref) > 4  # > max_det: reported
    assert int(det.num_valid[0]) == 4
    _assert_rows_equal(detections_to_rows(det)[0], ref[:4], "top-k / max_det")


def test_postprocess_jit_once_per_shape_and_empty_input():
    x = np.zeros((3, 37, 7), F32)  # obj 0 everywhere: nothing passes any conf > 0
    before = _postprocess_jit._cache_size()
    for conf, thr in [(0.1, 0.5), (0.3, 0.45), (0.001, 0.65)]:
        det = postprocess(x, conf, thr, pre_nms_topk=20, max_det=5)
        assert isinstance(det, Detections)
        np.testing.assert_array_equal(det.num_valid, [0, 0, 0])
        np.testing.assert_array_equal(det.num_candidates, [0, 0, 0])
        assert det.boxes.shape == (3, 5, 4) and det.classes.dtype == jnp.int32
        assert not np.asarray(det.scores).any()
    assert _postprocess_jit._cache_size() == before + 1
    postprocess(np.zeros((1, 37, 7), F32), 0.1, 0.5, pre_nms_topk=20, max_det=5)  # any B works
    assert _postprocess_jit._cache_size() == before + 2
    assert [r.shape for r in detections_to_rows(det)] == [(0, 7)] * 3
    with pytest.raises(ValueError, match=r"\[B, N, 5 \+ C\]"):
        postprocess(np.zeros((37, 7), F32), 0.1, 0.5)
