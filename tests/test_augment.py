"""The training augmentations against the official YOLOX formulas (commit 6ddff48).

Geometry is checked three ways: on the official fixture numbers (`get_mosaic_coordinate` cases,
`apply_affine_to_bboxes` with three matrices; numeric copy in tests/fixtures/augment.npz), on
synthetic images with filled rectangles (the rectangle's pixels and its box must move together),
and against transcriptions of the official functions (`mixup`, `augment_hsv`, `get_affine_matrix`)
fed with the same random draws (a twin generator replays ours).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import FIXTURES

from yolox_jax.config import variant_config
from yolox_jax.data import augment as A
from yolox_jax.data.transforms import letterbox, resize_fit


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "augment.npz") as f:
        return {k: f[k] for k in f.files}


def rect_image(h: int, w: int, box, value: int = 255, bg: int = 0) -> np.ndarray:
    """[h, w, 3] uint8 `bg` with the pixels [y1, y2) x [x1, x2) set to `value`."""
    img = np.full((h, w, 3), bg, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    img[y1:y2, x1:x2] = value
    return img


def pixel_box(img: np.ndarray, lo: int, hi: int = 255) -> np.ndarray:
    """Bounding box (x1, y1, x2, y2) of the pixels whose channel 0 lies in [lo, hi]."""
    ys, xs = np.nonzero((img[..., 0] >= lo) & (img[..., 0] <= hi))
    assert len(xs), "no pixel of the rectangle left"
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


# ------------------------------------------------------------------------------------ mosaic


def test_mosaic_coordinates_match_official_fixture(fx):
    cases = fx["mosaic_cases_xc_yc_w_h_inputh_inputw"]
    expected = fx["mosaic_coords_x1y1x2y2_small_x1y1x2y2"]
    for case, exp in zip(cases, expected, strict=True):
        xc, yc, w, h, ih, iw = (int(v) for v in case)
        for idx in range(4):
            big, small = A.get_mosaic_coordinate(idx, xc, yc, w, h, ih, iw)
            assert list(big) + list(small) == exp[idx].tolist(), (case, idx)
    with pytest.raises(ValueError, match="mosaic_index"):
        A.get_mosaic_coordinate(4, 1, 1, 1, 1, 1, 1)


def test_mosaic_tiles_and_boxes_move_together():
    ih, iw = 64, 96
    # Tiles 0, 1 and 3 already fit (scale 1: copied exactly), tile 2 is upscaled 2x.
    specs = [((64, 80), (10, 12, 50, 40), 250), ((48, 96), (60, 5, 90, 30), 200),
             ((32, 40), (5, 4, 25, 20), 150), ((64, 96), (0, 30, 40, 64), 100)]
    samples = [
        (rect_image(h, w, box, value, bg=20), np.array([box], np.float64), np.array([i]))
        for i, ((h, w), box, value) in enumerate(specs)
    ]
    xc, yc = 70, 50
    canvas, boxes, classes = A.mosaic(samples, (ih, iw), center=(xc, yc))
    assert canvas.shape == (2 * ih, 2 * iw, 3) and canvas.dtype == np.uint8
    assert classes.tolist() == [0, 1, 2, 3]
    for i, ((h0, w0), box, value) in enumerate(specs):
        scale = min(ih / h0, iw / w0)
        h, w = int(h0 * scale), int(w0 * scale)
        (lx1, ly1, lx2, ly2), (sx1, sy1, sx2, sy2) = A.get_mosaic_coordinate(
            i, xc, yc, w, h, ih, iw)
        # Official label arithmetic: scale, shift by (l - s), clip to the 2H x 2W canvas.
        exp = np.array(box, np.float64) * scale + [lx1 - sx1, ly1 - sy1] * 2
        exp = np.clip(exp, 0, [2 * iw, 2 * ih] * 2)
        np.testing.assert_allclose(boxes[i], exp)
        # The rectangle's pixels, clipped to the tile's visible part, are where its box says.
        vis = np.array([max(exp[0], lx1), max(exp[1], ly1), min(exp[2], lx2), min(exp[3], ly2)])
        tol = 0 if scale == 1 else 1
        np.testing.assert_allclose(pixel_box(canvas, value - 2, value + 2), vis, atol=tol)
        if scale == 1:
            np.testing.assert_array_equal(canvas[ly1:ly2, lx1:lx2],
                                          samples[i][0][sy1:sy2, sx1:sx2])
    # Outside the four tiles: the official 114 fill.
    covered = np.zeros(canvas.shape[:2], bool)
    for i, ((h0, w0), _, _) in enumerate(specs):
        scale = min(ih / h0, iw / w0)
        (lx1, ly1, lx2, ly2), _ = A.get_mosaic_coordinate(
            i, xc, yc, int(w0 * scale), int(h0 * scale), ih, iw)
        covered[ly1:ly2, lx1:lx2] = True
    assert (canvas[~covered] == 114).all()


def test_mosaic_center_draw_is_official_range():
    samples = [(rect_image(32, 32, (4, 4, 20, 20)), np.array([[4, 4, 20, 20.0]]), [0])] * 4
    for seed in range(5):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        got = A.mosaic(samples, (32, 48), rng)
        yc = int(twin.uniform(0.5 * 32, 1.5 * 32))  # official: yc first, then xc
        xc = int(twin.uniform(0.5 * 48, 1.5 * 48))
        ref = A.mosaic(samples, (32, 48), center=(xc, yc))
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


# ------------------------------------------------------------------------------------ affine


def test_affine_boxes_match_official_fixture(fx):
    boxes = fx["affine_boxes_in_x1y1x2y2cls"]
    target = tuple(int(v) for v in fx["affine_target_size_w_h"])
    for i in range(3):
        out = A.apply_affine_to_bboxes(boxes[:, :4], target, fx[f"affine_M{i}"])
        np.testing.assert_allclose(out, fx[f"affine_boxes_out{i}"][:, :4], rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(fx[f"affine_boxes_out{i}"][:, 4], boxes[:, 4])


def test_affine_matrix_follows_official_draws():
    for seed, (deg, tr, sc, sh) in enumerate([(10.0, 0.1, (0.1, 2.0), 2.0),
                                              (45.0, 0.2, (0.3, 2.0), 10.0)]):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        m, scale = A.get_affine_matrix(rng, (416, 320), deg, tr, sc, sh)
        # Official get_affine_matrix: angle, scale, shear x, shear y, translate x, translate y.
        angle = twin.uniform(-deg, deg)
        s = twin.uniform(*sc)
        rot = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=s)
        shear_x = math.tan(twin.uniform(-sh, sh) * math.pi / 180)
        shear_y = math.tan(twin.uniform(-sh, sh) * math.pi / 180)
        ref = np.ones((2, 3))
        ref[0] = rot[0] + shear_y * rot[1]
        ref[1] = rot[1] + shear_x * rot[0]
        ref[0, 2] = twin.uniform(-tr, tr) * 416
        ref[1, 2] = twin.uniform(-tr, tr) * 320
        np.testing.assert_array_equal(m, ref)
        assert scale == s
    with pytest.raises(ValueError, match="scale must be positive"):
        A.get_affine_matrix(np.random.default_rng(0), (64, 64), scales=(-2.0, -1.0))


def test_random_affine_moves_rectangle_with_box():
    box = (40, 30, 100, 70)
    img = rect_image(128, 160, box)
    angle, scale, shear = 12.0, 1.1, math.tan(2 * math.pi / 180)
    rot = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=scale)
    m = np.ones((2, 3))
    m[0] = rot[0] + shear * rot[1]
    m[1] = rot[1] - shear * rot[0]
    m[:, 2] = (-10.0, 25.0)
    out, boxes, classes = A.random_affine(
        img, np.array([box], np.float64), np.array([3]), None, target_wh=(110, 96), matrix=m)
    assert out.shape == (96, 110, 3) and classes.tolist() == [3]
    # Border value 114 where the inverse map falls outside the source image (by > 1 px).
    inv = cv2.invertAffineTransform(m)
    ys, xs = np.mgrid[0:96, 0:110]
    sx, sy = (inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])).reshape(2, 96, 110)
    outside = (sx < -1) | (sx > 161) | (sy < -1) | (sy > 129)
    assert outside.any() and (out[outside] == 114).all()
    # The warped rectangle's pixel box is its corners' box, clipped to the 110 x 96 target.
    np.testing.assert_allclose(pixel_box(out, 128), boxes[0], atol=1.5)
    assert boxes[0, 2] == 110  # the rectangle crosses the right border: clipped there


# ---------------------------------------------------------------------------- mixup, hsv, flip


def official_mixup(origin_img, origin_labels, img, cp_labels, input_dim, jit, flip, randint):
    """The official `MosaicDetection.mixup` body, with its random draws passed in.

    labels [K, 5] = (x1, y1, x2, y2, cls); `img`, `cp_labels` = what `pull_item` gives.
    """
    cp_img = np.ones((input_dim[0], input_dim[1], 3), dtype=np.uint8) * 114
    r = min(input_dim[0] / img.shape[0], input_dim[1] / img.shape[1])
    resized = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)),
                         interpolation=cv2.INTER_LINEAR)
    cp_img[: int(img.shape[0] * r), : int(img.shape[1] * r)] = resized
    cp_img = cv2.resize(cp_img, (int(cp_img.shape[1] * jit), int(cp_img.shape[0] * jit)))
    r *= jit
    if flip:
        cp_img = cp_img[:, ::-1, :]
    origin_h, origin_w = cp_img.shape[:2]
    target_h, target_w = origin_img.shape[:2]
    padded = np.zeros((max(origin_h, target_h), max(origin_w, target_w), 3), dtype=np.uint8)
    padded[:origin_h, :origin_w] = cp_img
    x_offset, y_offset = 0, 0
    if padded.shape[0] > target_h:
        y_offset = randint(0, padded.shape[0] - target_h - 1)
    if padded.shape[1] > target_w:
        x_offset = randint(0, padded.shape[1] - target_w - 1)
    cropped = padded[y_offset: y_offset + target_h, x_offset: x_offset + target_w]
    bb = cp_labels[:, :4].copy()  # adjust_box_anns(bbox, r, 0, 0, origin_w, origin_h)
    bb[:, 0::2] = np.clip(bb[:, 0::2] * r, 0, origin_w)
    bb[:, 1::2] = np.clip(bb[:, 1::2] * r, 0, origin_h)
    if flip:
        bb[:, 0::2] = origin_w - bb[:, 0::2][:, ::-1]
    bb[:, 0::2] = np.clip(bb[:, 0::2] - x_offset, 0, target_w)
    bb[:, 1::2] = np.clip(bb[:, 1::2] - y_offset, 0, target_h)
    labels = np.vstack((origin_labels, np.hstack((bb, cp_labels[:, 4:5]))))
    out = 0.5 * origin_img.astype(np.float32) + 0.5 * cropped.astype(np.float32)
    return out.astype(np.uint8), labels


@pytest.mark.parametrize("seed", range(8))
def test_mixup_matches_official(seed):
    rng0 = np.random.default_rng(100 + seed)
    origin = rng0.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    origin_labels = np.array([[5.0, 6, 40, 50, 1]])
    partner_raw = rect_image(70, 120, (30, 10, 90, 50), value=201, bg=31)
    partner, r = resize_fit(partner_raw, (64, 96))  # what pull_item returns
    cp_labels = np.array([[30.0, 10, 90, 50, 7], [0, 0, 120, 70, 2]])
    cp_labels[:, :4] *= r
    rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
    out, boxes, classes = A.mixup(
        origin, origin_labels[:, :4], origin_labels[:, 4], partner, cp_labels[:, :4],
        cp_labels[:, 4], rng, (64, 96), (0.5, 1.5))
    jit = twin.uniform(0.5, 1.5)
    flip = twin.uniform(0, 1) > 0.5
    ref_img, ref_labels = official_mixup(origin, origin_labels, partner, cp_labels, (64, 96), jit,
                                         flip, lambda a, b: int(twin.integers(a, b + 1)))
    np.testing.assert_array_equal(out, ref_img)
    np.testing.assert_allclose(boxes, ref_labels[:, :4])
    np.testing.assert_array_equal(classes, ref_labels[:, 4])
    # On a black image the blend is the partner halved: its rectangle is where its box is.
    rng = np.random.default_rng(seed)
    out, boxes, _ = A.mixup(np.zeros_like(origin), np.zeros((0, 4)), [], partner,
                            cp_labels[:, :4], cp_labels[:, 4], rng, (64, 96))
    if boxes[0, 2] - boxes[0, 0] >= 2 and boxes[0, 3] - boxes[0, 1] >= 2:
        np.testing.assert_allclose(pixel_box(out, 95, 105), boxes[0], atol=1.5)


def official_hsv(img: np.ndarray, gains) -> np.ndarray:
    """The official `augment_hsv` arithmetic (int16) for given integer gains."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


def test_hsv_matches_official_arithmetic():
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for gains in [(0, 0, 0), (5, -30, 30), (-5, 30, -30), (-3, 12, -7), (4, 0, 0), (0, 0, -1)]:
        np.testing.assert_array_equal(A.apply_hsv(img, gains), official_hsv(img, gains))
    for seed in range(20):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        out = A.augment_hsv(img, rng)
        g = twin.uniform(-1, 1, 3) * [5, 30, 30]
        g *= twin.integers(0, 2, 3)
        np.testing.assert_array_equal(out, official_hsv(img, g.astype(np.int16)))


def test_mirror_moves_rectangle_with_box():
    box = np.array([[10.0, 5, 30, 25]])
    img = rect_image(40, 64, box[0])
    out, flipped = A.mirror(img, box, np.random.default_rng(0), prob=1.0)
    np.testing.assert_array_equal(flipped, [[64 - 30, 5, 64 - 10, 25]])  # width - x2, width - x1
    np.testing.assert_array_equal(pixel_box(out, 128), flipped[0])
    out, same = A.mirror(img, box, np.random.default_rng(0), prob=0.0)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(same, box)


# --------------------------------------------------------------------------- train_transform


def test_train_transform_letterbox_and_labels():
    img = rect_image(50, 100, (20, 10, 60, 40))
    boxes = np.array([[20.0, 10, 60, 40], [70, 5, 72, 30]])
    out, labels, info = A.train_transform(img, boxes, [4, 9], np.random.default_rng(0), (64, 64),
                                          max_labels=6, flip_prob=0.0, hsv_prob=0.0)
    r = 0.64
    ref, _ = letterbox(img, (64, 64))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)
    # (class, cx, cy, w, h) * r; the 2 px wide box is 1.28 px after the letterbox: kept (> 1).
    np.testing.assert_allclose(labels[:2], [[4, 40 * r, 25 * r, 40 * r, 30 * r],
                                            [9, 71 * r, 17.5 * r, 2 * r, 25 * r]], rtol=1e-6)
    assert labels.shape == (6, 5) and labels.dtype == np.float32 and not labels[2:].any()
    assert info == {"num_labels": 2, "small_dropped": 0}


def test_train_transform_drops_boxes_under_one_pixel():
    img = rect_image(64, 64, (10, 10, 40, 40))
    boxes = np.array([[10.0, 10, 40, 40], [50, 10, 51, 30], [0, 60, 30, 61.5], [5, 5, 7, 7]])
    _, labels, info = A.train_transform(img, boxes, [0, 1, 2, 3], np.random.default_rng(0),
                                        (64, 64), max_labels=5, flip_prob=0.0, hsv_prob=0.0)
    # Official: keep min(w, h) > 1. 1 px wide dropped, 1.5 px kept, 2 px kept.
    assert labels[:, 0][: 3].tolist() == [0, 2, 3] and not labels[3:].any()
    assert info["small_dropped"] == 1


def test_train_transform_all_dropped_falls_back_to_plain_letterbox():
    img = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    boxes = np.array([[3.0, 3, 3.5, 20]])  # 0.5 px wide
    out, labels, info = A.train_transform(img, boxes, [7], np.random.default_rng(0), (64, 64),
                                          max_labels=3, flip_prob=1.0, hsv_prob=1.0)
    ref, r = letterbox(img, (64, 64))
    np.testing.assert_array_equal(out, ref)  # un-augmented: no HSV, no flip
    np.testing.assert_allclose(labels[0], [7, 3.25 * r, 11.5 * r, 0.5 * r, 17 * r], rtol=1e-6)
    assert info["num_labels"] == 1


def test_train_transform_without_boxes_draws_nothing():
    img = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    rng = np.random.default_rng(5)
    out, labels, info = A.train_transform(img, np.zeros((0, 4)), [], rng, (40, 40), max_labels=4)
    np.testing.assert_array_equal(out, letterbox(img, (40, 40))[0])
    assert labels.shape == (4, 5) and not labels.any() and info["num_labels"] == 0
    assert rng.random() == np.random.default_rng(5).random()


def test_pad_labels_keeps_largest_and_counts():
    cxcywh = np.array([[10, 10, w, 2.0] for w in (1, 9, 3, 7, 5, 8)])
    labels, n = A.pad_labels(np.arange(6), cxcywh, 3)
    assert n == 6
    assert labels[:, 0].tolist() == [1, 3, 5]  # the 3 largest, in their original order
    labels, n = A.pad_labels(np.arange(2), cxcywh[:2], 4)
    assert n == 2 and labels[:2, 0].tolist() == [0, 1] and not labels[2:].any()


# ----------------------------------------------------------------------------- augment_record


def _dataset(n: int, size=(48, 64), with_boxes=True):
    """n records: a bright rectangle on grey, its box, class i % 3 (boxes optional)."""
    data = []
    for i in range(n):
        h, w = size[0] + 4 * (i % 3), size[1] - 4 * (i % 2)
        box = (6 + i % 5, 8, 30 + i % 7, 36)
        boxes = np.array([box], np.float64) if with_boxes else np.zeros((0, 4))
        classes = np.array([i % 3]) if with_boxes else np.zeros(0, np.int64)
        data.append((rect_image(h, w, box, 250, bg=60), boxes, classes))
    return data


def _cfg(name: str = "yolox_s", **kw):
    c = variant_config(name).data
    c.input_size = (64, 64)
    for k, v in kw.items():
        c[k] = v
    return c


def test_augment_record_without_mosaic_is_train_transform():
    data = _dataset(4)
    cfg = _cfg()
    for enable, prob in ((False, 1.0), (True, 0.0)):
        cfg.mosaic_prob = prob
        rng, twin = np.random.default_rng(3), np.random.default_rng(3)
        out, labels, stats = A.augment_record(1, data.__getitem__, 4, rng, cfg,
                                              enable_mosaic=enable)
        if enable:
            twin.random()  # the mosaic coin (only drawn when mosaic is enabled)
        ref, ref_labels, _ = A.train_transform(*data[1], twin, (64, 64), 120, 0.5, 1.0)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(labels, ref_labels)
        assert not stats["mosaic"] and not stats["mixup"]


def test_augment_record_boxes_follow_rectangles():
    """Mosaic + affine + flip + letterbox (no colour change): every label box holds its bright
    rectangle and no bright pixel lies outside the boxes (but for slivers whose box fell under
    1 px and was dropped, as the official does)."""
    data = _dataset(5)
    cfg = _cfg(hsv_prob=0.0, enable_mixup=False)
    for seed in range(12):
        out, labels, stats = A.augment_record(seed % 5, data.__getitem__, 5,
                                              np.random.default_rng(seed), cfg)
        assert stats["mosaic"] and out.shape == (64, 64, 3) and out.dtype == np.uint8
        bright = out[..., 0] > 200
        inside = np.zeros_like(bright)
        for c, cx, cy, w, h in labels[labels[:, 3] > 0]:
            x1, y1, x2, y2 = (int(v) for v in (cx - w / 2 - 1.5, cy - h / 2 - 1.5,
                                               cx + w / 2 + 2.5, cy + h / 2 + 2.5))
            inside[max(y1, 0):y2, max(x1, 0):x2] = True
            core = out[int(cy - h / 2 + 1):int(cy + h / 2 - 1), int(cx - w / 2 + 1):
                       int(cx + w / 2 - 1), 0]
            if w >= 6 and h >= 6:
                assert (core > 200).mean() > 0.5, (seed, c, cx, cy, w, h)
            assert c in (0, 1, 2)
        stray = int((bright & ~inside).sum())
        assert stray == 0 if stats["small_dropped"] == 0 else stray <= 2 * 64, (seed, stray)


@pytest.mark.parametrize("name", ["yolox_s", "yolox_nano"])
def test_augment_record_probabilities_from_config(name):
    data = _dataset(6)
    cfg = _cfg(name)
    stats = [A.augment_record(i % 6, data.__getitem__, 6, np.random.default_rng(i), cfg)[2]
             for i in range(160)]
    mosaic = np.mean([s["mosaic"] for s in stats])
    mixup = np.mean([s["mixup"] for s in stats])
    if name == "yolox_s":  # yolox_base: mosaic_prob 1.0, mixup_prob 1.0, enable_mixup
        assert mosaic == 1.0 and mixup == 1.0
    else:  # yolox_nano: mosaic_prob 0.5, enable_mixup False
        assert 0.35 < mosaic < 0.65 and mixup == 0.0


def test_augment_record_empty_and_partner_search():
    empty = _dataset(3, with_boxes=False)
    out, labels, stats = A.augment_record(0, empty.__getitem__, 3, np.random.default_rng(0),
                                          _cfg())
    assert out.shape == (64, 64, 3) and not labels.any() and not stats["mixup"]
    # Only record 2 has boxes: mixup must find it as the partner (has_boxes answers cheaply).
    data = _dataset(3, with_boxes=False) + _dataset(1)
    loads = []

    def load(i):
        loads.append(i)
        return data[i]

    for seed in range(6):
        loads.clear()
        _, labels, stats = A.augment_record(3, load, 4, np.random.default_rng(seed), _cfg(),
                                            has_boxes=lambda i: len(data[i][1]) > 0)
        if stats["mixup"]:
            assert loads[-1] == 3  # the only record with boxes
    with pytest.raises(IndexError, match="out of range"):
        A.augment_record(4, load, 4, np.random.default_rng(0), _cfg())
