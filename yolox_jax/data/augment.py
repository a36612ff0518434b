"""The official YOLOX training augmentations as pure numpy / cv2 functions.

Same semantics and arithmetic as the official `yolox/data/data_augment.py` (`augment_hsv`,
`_mirror`, `get_affine_matrix`, `apply_affine_to_bboxes`, `random_affine`, `TrainTransform`) and
`yolox/data/datasets/mosaicdetection.py` (`get_mosaic_coordinate`, `MosaicDetection.__getitem__`,
`mixup`) at commit 6ddff48. Differences, all deliberate:

* No global RNG: every random function takes an explicit `rng: np.random.Generator` (the
  pipeline makes one per (seed, epoch, record)), so a sample is a pure function of its inputs.
  The draws therefore differ from the official `random` / `np.random` streams, but follow the
  same distributions. The draw order of `augment_record` is documented there.
* Inputs are not modified in place (the official `augment_hsv` and `xyxy2cxcywh` are).
* Boxes and classes travel as separate arrays: boxes [K, 4] float64 (x1, y1, x2, y2) in pixels
  of the image they come with, classes [K] (any numeric dtype).
* When a sample has more than `max_labels` boxes the largest (by area) are kept; the official
  keeps the first ones. The count before the cap is returned so the caller can warn.
* Images stay uint8 HWC to the end (the official `TrainTransform` returns the same values as
  float32 CHW); the cast happens on the device. Integer-exact shortcuts (uint8 mixup blend, HSV
  lookup tables, skipped same-size resizes) replace the official's float / int16 arithmetic.
* The mixup partner search is bounded (`MAX_MIXUP_TRIES`); the official loops forever on a
  dataset without any box.

As in the official code, `random_affine` and `mixup` only clip boxes (no `box_candidates`
filter at this commit); `train_transform` drops the boxes with min(w, h) <= 1 after the letterbox.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from yolox_jax.data.transforms import PAD_VALUE, letterbox, resize_fit, to_bgr
from yolox_jax.ops.boxes import xyxy_to_cxcywh

# A record loader: index -> (image [h, w, 3] BGR uint8, boxes [K, 4] xyxy pixels, classes [K]).
Loader = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]

MAX_MIXUP_TRIES = 64

_BORDER = (PAD_VALUE, PAD_VALUE, PAD_VALUE)


def _letterbox(img: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, float]:
    """`letterbox`, skipping the work for an image that already is (H, W): then r = 1 and
    cv2's same-size INTER_LINEAR resize is a copy, so the result is the image itself."""
    if img.ndim == 3 and img.shape[2] == 3 and img.shape[:2] == (int(size[0]), int(size[1])):
        return img, 1.0
    return letterbox(img, size)


def _as_boxes(boxes: Any, classes: Any, name: str = "boxes") -> tuple[np.ndarray, np.ndarray]:
    """Validate -> (boxes [K, 4] float64 copy, classes [K] copy)."""
    b = np.array(boxes, dtype=np.float64)
    if b.size == 0:
        b = np.zeros((0, 4))
    elif b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name}: expected [K, 4] (x1, y1, x2, y2), got shape {b.shape}")
    c = np.array(classes).reshape(-1)
    if len(c) != len(b):
        raise ValueError(f"{name}: {len(b)} boxes but {len(c)} classes")
    return b, c


# ----------------------------------------------------------------------------------------------
# Mosaic
# ----------------------------------------------------------------------------------------------


def get_mosaic_coordinate(
    mosaic_index: int, xc: int, yc: int, w: int, h: int, input_h: int, input_w: int
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where tile `mosaic_index` (0 TL, 1 TR, 2 BL, 3 BR) of size (w, h) goes on the 2H x 2W canvas.

    -> ((x1, y1, x2, y2) on the canvas, (x1, y1, x2, y2) of the part of the tile that is used),
    as the official function (whose unused first argument is dropped).
    """
    if mosaic_index == 0:
        x1, y1, x2, y2 = max(xc - w, 0), max(yc - h, 0), xc, yc
        small = w - (x2 - x1), h - (y2 - y1), w, h
    elif mosaic_index == 1:
        x1, y1, x2, y2 = xc, max(yc - h, 0), min(xc + w, input_w * 2), yc
        small = 0, h - (y2 - y1), min(w, x2 - x1), h
    elif mosaic_index == 2:
        x1, y1, x2, y2 = max(xc - w, 0), yc, xc, min(input_h * 2, yc + h)
        small = w - (x2 - x1), 0, w, min(y2 - y1, h)
    elif mosaic_index == 3:
        x1, y1, x2, y2 = xc, yc, min(xc + w, input_w * 2), min(input_h * 2, yc + h)
        small = 0, 0, min(w, x2 - x1), min(y2 - y1, h)
    else:
        raise ValueError(f"mosaic_index must be 0..3, got {mosaic_index}")
    return (x1, y1, x2, y2), small


def mosaic(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    input_size: Sequence[int],
    rng: np.random.Generator | None = None,
    center: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 x (img, boxes [K, 4], classes [K]) -> ([2H, 2W, 3] uint8, boxes [N, 4], classes [N]).

    Each image is resized by min(H / h, W / w) and placed around the centre (xc, yc) as the
    official `MosaicDetection.__getitem__` does; boxes are scaled, shifted and clipped to the
    canvas. Draws yc then xc (int of uniform in [0.5, 1.5) x H, W) unless `center` = (xc, yc).
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 (img, boxes, classes) samples, got {len(samples)}")
    input_h, input_w = int(input_size[0]), int(input_size[1])
    if center is None:
        if rng is None:
            raise ValueError("mosaic needs an rng or an explicit center")
        yc = int(rng.uniform(0.5 * input_h, 1.5 * input_h))
        xc = int(rng.uniform(0.5 * input_w, 1.5 * input_w))
    else:
        xc, yc = int(center[0]), int(center[1])

    canvas = np.full((input_h * 2, input_w * 2, 3), PAD_VALUE, dtype=np.uint8)
    all_boxes, all_classes = [], []
    for i, (img, boxes, classes) in enumerate(samples):
        img = to_bgr(img, f"mosaic image {i}")
        boxes, classes = _as_boxes(boxes, classes, f"mosaic boxes {i}")
        img, scale = resize_fit(img, (input_h, input_w))
        h, w = img.shape[:2]
        (l_x1, l_y1, l_x2, l_y2), (s_x1, s_y1, s_x2, s_y2) = get_mosaic_coordinate(
            i, xc, yc, w, h, input_h, input_w
        )
        canvas[l_y1:l_y2, l_x1:l_x2] = img[s_y1:s_y2, s_x1:s_x2]
        padw, padh = l_x1 - s_x1, l_y1 - s_y1
        moved = boxes.copy()
        moved[:, 0::2] = scale * boxes[:, 0::2] + padw
        moved[:, 1::2] = scale * boxes[:, 1::2] + padh
        all_boxes.append(moved)
        all_classes.append(classes)
    boxes = np.concatenate(all_boxes, 0)
    classes = np.concatenate(all_classes, 0)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, 2 * input_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, 2 * input_h)
    return canvas, boxes, classes


# ----------------------------------------------------------------------------------------------
# Random affine
# ----------------------------------------------------------------------------------------------


def _aug_param(rng: np.random.Generator, value: Any, center: float = 0.0) -> float:
    """Official `get_aug_params`: a number v -> U(center - v, center + v); a pair -> U(lo, hi)."""
    if isinstance(value, int | float):
        return float(rng.uniform(center - value, center + value))
    if len(value) == 2:
        return float(rng.uniform(value[0], value[1]))
    raise ValueError(f"affine parameter must be a number or a (low, high) pair, got {value!r}")


def get_affine_matrix(
    rng: np.random.Generator,
    target_wh: Sequence[int],
    degrees: Any = 10.0,
    translate: Any = 0.1,
    scales: Any = 0.1,
    shear: Any = 10.0,
) -> tuple[np.ndarray, float]:
    """Random rotation+scale, shear and translation -> (M [2, 3] float64, scale).

    Draw order as official: angle, scale, shear_x, shear_y, translate_x, translate_y.
    `target_wh` is (width, height) as in the official code (the translation is a fraction of it).
    """
    twidth, theight = target_wh
    angle = _aug_param(rng, degrees)
    scale = _aug_param(rng, scales, center=1.0)
    if scale <= 0.0:
        raise ValueError(f"affine scale must be positive, drew {scale} from scales={scales!r}")
    rot = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=scale)
    m = np.ones([2, 3])
    shear_x = math.tan(_aug_param(rng, shear) * math.pi / 180)
    shear_y = math.tan(_aug_param(rng, shear) * math.pi / 180)
    m[0] = rot[0] + shear_y * rot[1]
    m[1] = rot[1] + shear_x * rot[0]
    m[0, 2] = _aug_param(rng, translate) * twidth
    m[1, 2] = _aug_param(rng, translate) * theight
    return m, scale


def apply_affine_to_bboxes(
    boxes: np.ndarray, target_wh: Sequence[int], m: np.ndarray
) -> np.ndarray:
    """Warp the 4 corners of each box [K, 4] by M [2, 3], take min/max, clip to [0, w] x [0, h]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    twidth, theight = target_wh
    corners = np.ones((4 * n, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(4 * n, 2)  # x1y1 x2y2 x1y2 x2y1
    corners = (corners @ np.asarray(m, dtype=np.float64).T).reshape(n, 8)
    xs, ys = corners[:, 0::2], corners[:, 1::2]
    out = np.concatenate((xs.min(1), ys.min(1), xs.max(1), ys.max(1))).reshape(4, n).T
    out[:, 0::2] = out[:, 0::2].clip(0, twidth)
    out[:, 1::2] = out[:, 1::2].clip(0, theight)
    return np.ascontiguousarray(out)


def random_affine(
    img: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    rng: np.random.Generator,
    target_wh: Sequence[int] = (640, 640),
    degrees: Any = 10.0,
    translate: Any = 0.1,
    scales: Any = 0.1,
    shear: Any = 10.0,
    matrix: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official `random_affine`: warp img into (w, h) = `target_wh` (border 114), boxes follow.

    -> (img [h, w, 3] uint8, boxes [K, 4] clipped, classes [K]); no box is dropped here (the
    official drops degenerate boxes later, in `train_transform`). `matrix` skips the draw.
    """
    boxes, classes = _as_boxes(boxes, classes)
    if matrix is None:
        matrix, _ = get_affine_matrix(rng, target_wh, degrees, translate, scales, shear)
    dsize = (int(target_wh[0]), int(target_wh[1]))
    out = cv2.warpAffine(img, matrix, dsize=dsize, borderValue=_BORDER)
    if len(boxes):
        boxes = apply_affine_to_bboxes(boxes, target_wh, matrix)
    return out, boxes, classes


# ----------------------------------------------------------------------------------------------
# Mixup, HSV, flip
# ----------------------------------------------------------------------------------------------


def mixup(
    img: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    other_img: np.ndarray,
    other_boxes: np.ndarray,
    other_classes: np.ndarray,
    rng: np.random.Generator,
    input_size: Sequence[int],
    mixup_scale: Sequence[float] = (0.5, 1.5),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official `MosaicDetection.mixup`: blend a jittered, maybe flipped copy of `other_img` in.

    `other_img` is letterboxed to `input_size` (H, W), resized by a jitter factor in
    `mixup_scale`, flipped with p=0.5, put on a zero canvas at least as large as `img` and cropped
    at a random offset; the result is 0.5 * img + 0.5 * crop (truncated to uint8). Its boxes are
    moved the same way, clipped to `img` and appended. Draw order: jitter, flip, y offset, x offset
    (offsets only when the canvas is larger). -> (img [h, w, 3] uint8, boxes [N, 4], classes [N]).

    Only the cropped window of the zero canvas is built, and the blend is done in uint8 as
    floor((a + b) / 2) = (a & b) + ((a ^ b) >> 1), which is exactly the official float32
    `(0.5 * a + 0.5 * b).astype(uint8)` (halves of integers are exact) at a fraction of the cost.
    """
    boxes, classes = _as_boxes(boxes, classes)
    other_boxes, other_classes = _as_boxes(other_boxes, other_classes, "mixup partner boxes")
    img = to_bgr(img, "mixup image")
    jit_factor = float(rng.uniform(mixup_scale[0], mixup_scale[1]))
    flip = float(rng.uniform(0.0, 1.0)) > 0.5

    cp_img, cp_scale = _letterbox(other_img, input_size)
    jit_wh = (int(cp_img.shape[1] * jit_factor), int(cp_img.shape[0] * jit_factor))
    cp_img = cv2.resize(cp_img, jit_wh)  # the official's default interpolation (INTER_LINEAR)
    cp_scale *= jit_factor
    if flip:
        cp_img = cv2.flip(cp_img, 1)

    origin_h, origin_w = cp_img.shape[:2]
    target_h, target_w = img.shape[:2]
    x_offset, y_offset = 0, 0
    if origin_h > target_h:  # the official: randint(0, max(origin_h, target_h) - target_h - 1)
        y_offset = int(rng.integers(0, origin_h - target_h))
    if origin_w > target_w:
        x_offset = int(rng.integers(0, origin_w - target_w))
    # The window [y_offset, +target_h) x [x_offset, +target_w) of the zero-padded partner.
    cropped = np.zeros_like(img)
    part = cp_img[y_offset : y_offset + target_h, x_offset : x_offset + target_w]
    cropped[: part.shape[0], : part.shape[1]] = part

    cp_boxes = other_boxes.copy()
    cp_boxes[:, 0::2] = np.clip(other_boxes[:, 0::2] * cp_scale, 0, origin_w)
    cp_boxes[:, 1::2] = np.clip(other_boxes[:, 1::2] * cp_scale, 0, origin_h)
    if flip:
        cp_boxes[:, 0::2] = origin_w - cp_boxes[:, 0::2][:, ::-1]
    cp_boxes[:, 0::2] = np.clip(cp_boxes[:, 0::2] - x_offset, 0, target_w)
    cp_boxes[:, 1::2] = np.clip(cp_boxes[:, 1::2] - y_offset, 0, target_h)

    blended = (img & cropped) + ((img ^ cropped) >> 1)
    out_boxes = np.concatenate([boxes, cp_boxes], 0)
    out_classes = np.concatenate([classes, other_classes], 0)
    return blended, out_boxes, out_classes


def hsv_gains(
    rng: np.random.Generator, hgain: float = 5, sgain: float = 30, vgain: float = 30
) -> np.ndarray:
    """The official `augment_hsv` draw: 3 uniforms in [-1, 1) times the gains, each kept with
    p=0.5 (3 integers in {0, 1}), truncated to int16 -> [3] (dh, ds, dv)."""
    gains = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain]
    gains *= rng.integers(0, 2, 3)
    return gains.astype(np.int16)


def apply_hsv(img: np.ndarray, gains: Sequence[int]) -> np.ndarray:
    """Shift H (mod 180), S and V (clipped to 0..255) by integer `gains` -> new [h, w, 3] uint8.

    The official adds in int16 on the HSV image; for uint8 input that is a per-channel lookup
    table, applied with `cv2.LUT` (channels with a zero shift are left alone: H < 180 always).
    The BGR -> HSV -> BGR round trip is kept even for zero shifts, as the official.
    """
    dh, ds, dv = (int(g) for g in gains)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if dh or ds or dv:
        r = np.arange(256, dtype=np.int16)
        luts = (
            ((r + dh) % 180).astype(np.uint8),
            np.clip(r + ds, 0, 255).astype(np.uint8),
            np.clip(r + dv, 0, 255).astype(np.uint8),
        )
        channels = list(cv2.split(hsv))
        for i, shift in enumerate((dh, ds, dv)):
            if shift:
                channels[i] = cv2.LUT(channels[i], luts[i])
        hsv = cv2.merge(channels)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def augment_hsv(
    img: np.ndarray,
    rng: np.random.Generator,
    hgain: float = 5,
    sgain: float = 30,
    vgain: float = 30,
) -> np.ndarray:
    """Official (current) `augment_hsv`: random integer shifts of H (mod 180), S and V (clipped).

    Draws 3 uniforms in [-1, 1) then 3 integers in {0, 1} (`hsv_gains`). Returns a new
    [h, w, 3] uint8 image (the official works in place).
    """
    return apply_hsv(img, hsv_gains(rng, hgain, sgain, vgain))


def mirror(
    img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Official `_mirror`: horizontal flip with probability `prob` (one draw, always made)."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    width = img.shape[1]
    if rng.random() < prob:
        img = cv2.flip(img, 1)
        boxes[:, 0::2] = width - boxes[:, 2::-2]
    return img, boxes


# ----------------------------------------------------------------------------------------------
# TrainTransform and the per-record composition
# ----------------------------------------------------------------------------------------------


def pad_labels(
    classes: np.ndarray, boxes_cxcywh: np.ndarray, max_labels: int
) -> tuple[np.ndarray, int]:
    """-> ([max_labels, 5] float32 (class, cx, cy, w, h), zero rows pad; count before the cap).

    Over `max_labels` boxes the largest by area are kept (in their original order).
    """
    n = len(boxes_cxcywh)
    if n > max_labels:
        area = boxes_cxcywh[:, 2] * boxes_cxcywh[:, 3]
        keep = np.sort(np.argsort(-area, kind="stable")[:max_labels])
        classes, boxes_cxcywh = classes[keep], boxes_cxcywh[keep]
    labels = np.zeros((max_labels, 5), dtype=np.float64)
    labels[: len(boxes_cxcywh), 0] = classes
    labels[: len(boxes_cxcywh), 1:] = boxes_cxcywh
    return labels.astype(np.float32), n


def train_transform(
    img: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    rng: np.random.Generator,
    input_size: Sequence[int],
    max_labels: int = 120,
    flip_prob: float = 0.5,
    hsv_prob: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Official `TrainTransform`: HSV, flip, letterbox, drop boxes with min(w, h) <= 1, pad.

    -> (img [H, W, 3] uint8 BGR (the official returns the same values as float32 CHW; the
    network input is cast on the device), labels [max_labels, 5] float32 (class, cx, cy, w, h),
    {"num_labels": labels before the cap, "small_dropped": boxes removed by the 1-pixel rule}).
    With no box: the plain letterbox, no draw. If every box is dropped: as the official, the
    un-augmented (no HSV, no flip) letterbox with all the input boxes. Draws: hsv coin
    [+ augment_hsv's 6], flip coin.
    """
    img = to_bgr(img)
    boxes, classes = _as_boxes(boxes, classes)
    if len(boxes) == 0:
        out, _ = _letterbox(img, input_size)
        labels = np.zeros((max_labels, 5), dtype=np.float32)
        return out, labels, {"num_labels": 0, "small_dropped": 0}

    image_t = img
    if rng.random() < hsv_prob:
        image_t = augment_hsv(image_t, rng)
    image_t, boxes_t = mirror(image_t, boxes, rng, flip_prob)
    image_t, r = _letterbox(image_t, input_size)
    boxes_t = xyxy_to_cxcywh(boxes_t, xp=np) * r
    keep = np.minimum(boxes_t[:, 2], boxes_t[:, 3]) > 1
    boxes_t, classes_t = boxes_t[keep], classes[keep]
    small = int(len(keep) - keep.sum())
    if len(boxes_t) == 0:
        image_t, r_o = _letterbox(img, input_size)
        boxes_t, classes_t = xyxy_to_cxcywh(boxes, xp=np) * r_o, classes
        small = 0
    labels, n = pad_labels(classes_t, boxes_t, max_labels)
    return image_t, labels, {"num_labels": n, "small_dropped": small}


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        if key not in cfg:
            raise KeyError(f"data config lacks {key!r} (see yolox_jax/config.py c.data)")
        return cfg[key]
    if not hasattr(cfg, key):
        raise KeyError(f"data config lacks {key!r} (see yolox_jax/config.py c.data)")
    return getattr(cfg, key)


def _load(load: Loader, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img, boxes, classes = load(index)
    img = to_bgr(img, f"record {index}")
    boxes, classes = _as_boxes(boxes, classes, f"record {index} boxes")
    return img, boxes, classes


def augment_record(
    index: int,
    load: Loader,
    num_records: int,
    rng: np.random.Generator,
    cfg_data: Any,
    input_size: Sequence[int] | None = None,
    enable_mosaic: bool = True,
    has_boxes: Callable[[int], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One training sample as the official `MosaicDetection.__getitem__` + `TrainTransform`.

    `load(i)` -> (img [h, w, 3] BGR uint8, boxes [K, 4] xyxy pixels of that image, classes [K]);
    it may return the raw image or one already `resize_fit` to `input_size` (what the official
    `pull_item` returns: then the result matches the official exactly). `cfg_data` is `c.data`
    (fields mosaic_prob, mixup_prob, hsv_prob, flip_prob, degrees, translate, mosaic_scale,
    enable_mixup, mixup_scale, shear, max_labels, input_size). `enable_mosaic` False (the last
    no-aug epochs) skips mosaic, affine and mixup. `has_boxes(i)` optionally answers cheaply
    whether record i has boxes (for the mixup partner search; else the partner is loaded).

    Draw order from `rng`:
      1. if enable_mosaic: mosaic coin (random() < mosaic_prob)
      mosaic branch:
      2. 3 partner indices (integers in [0, num_records))
      3. mosaic centre: yc, xc
      4. affine: angle, scale, shear_x, shear_y, translate_x, translate_y
      5. if enable_mixup and boxes left: mixup coin (random() < mixup_prob); if taken: partner
         index (redrawn, up to MAX_MIXUP_TRIES, until it has boxes), jitter, flip, y/x offsets
      6. train_transform: hsv coin (+6 for augment_hsv), flip coin (none without boxes)
    -> (img [H, W, 3] uint8 BGR, labels [max_labels, 5] float32 (class, cx, cy, w, h),
    stats {"mosaic": bool, "mixup": bool, "num_labels": labels before the cap,
    "small_dropped": boxes dropped by the 1-pixel rule}).
    """
    if num_records <= 0:
        raise ValueError(f"num_records must be positive, got {num_records}")
    if not 0 <= index < num_records:
        raise IndexError(f"record index {index} out of range [0, {num_records})")
    if input_size is None:
        input_size = _get(cfg_data, "input_size")
    input_h, input_w = int(input_size[0]), int(input_size[1])
    max_labels = int(_get(cfg_data, "max_labels"))
    flip_prob = float(_get(cfg_data, "flip_prob"))
    hsv_prob = float(_get(cfg_data, "hsv_prob"))
    stats: dict[str, Any] = {"mosaic": False, "mixup": False}

    if enable_mosaic and rng.random() < float(_get(cfg_data, "mosaic_prob")):
        stats["mosaic"] = True
        indices = [index] + [int(rng.integers(0, num_records)) for _ in range(3)]
        samples = [_load(load, i) for i in indices]
        img, boxes, classes = mosaic(samples, (input_h, input_w), rng)
        img, boxes, classes = random_affine(
            img,
            boxes,
            classes,
            rng,
            target_wh=(input_w, input_h),
            degrees=_get(cfg_data, "degrees"),
            translate=_get(cfg_data, "translate"),
            scales=tuple(_get(cfg_data, "mosaic_scale")),
            shear=_get(cfg_data, "shear"),
        )
        if (
            bool(_get(cfg_data, "enable_mixup"))
            and len(boxes) > 0
            and rng.random() < float(_get(cfg_data, "mixup_prob"))
        ):
            partner = None
            for _ in range(MAX_MIXUP_TRIES):
                j = int(rng.integers(0, num_records))
                if has_boxes is not None and not has_boxes(j):
                    continue
                other = _load(load, j)
                if len(other[1]):
                    partner = other
                    break
            if partner is not None:
                stats["mixup"] = True
                img, boxes, classes = mixup(
                    img,
                    boxes,
                    classes,
                    *partner,
                    rng=rng,
                    input_size=(input_h, input_w),
                    mixup_scale=tuple(_get(cfg_data, "mixup_scale")),
                )
    else:
        img, boxes, classes = _load(load, index)

    out, labels, info = train_transform(
        img, boxes, classes, rng, (input_h, input_w), max_labels, flip_prob, hsv_prob
    )
    stats.update(info)
    return out, labels, stats
