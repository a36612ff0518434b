"""The one letterbox of the project (inference, evaluation, demo and training all use it).

Matches the official `yolox.data.data_augment.preproc` / `ValTransform` bit for bit: the image is
resized by r = min(H / h, W / w) to (int(w * r), int(h * r)) with `cv2.INTER_LINEAR` and put at the
top-left of an (H, W) canvas filled with 114. Everything here is HWC and BGR, as `cv2.imread`
returns; the network input layout (NHWC float32, BGR 0..255 unless `legacy`) is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PAD_VALUE = 114
# Pre-2021-08 YOLOX normalisation (ValTransform(legacy=True)), in RGB order.
LEGACY_MEAN = np.array([0.485, 0.456, 0.406])
LEGACY_STD = np.array([0.229, 0.224, 0.225])


def to_bgr(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Any uint8 image -> [h, w, 3] BGR uint8: gray [h, w] / [h, w, 1] and BGRA [h, w, 4] converted.

    Datasets hold grayscale and 4-channel files (the VOC raccoon set has three gray ones); every
    transform below assumes 3 channels, so they are converted once here. `name` (a file name)
    goes into the error message.
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name}: expected a numpy image array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image (as cv2.imread gives), got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        out = img
    elif img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        out = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        out = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    else:
        raise ValueError(
            f"{name}: expected an image of shape [h, w], [h, w, 1], [h, w, 3] or [h, w, 4], "
            f"got {img.shape}"
        )
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {img.shape}")
    return out


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
    return int(size[0]), int(size[1])


def letterbox_ratio(image_hw: Sequence[int], size: Sequence[int]) -> float:
    """The official scale r = min(H / h, W / w) for an image of shape `image_hw` into `size` (H, W).

    Detections in network-input pixels are divided by r to get original-image pixels.
    """
    height, width = _check_size(size)
    return min(height / image_hw[0], width / image_hw[1])


def resize_fit(img: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, float]:
    """Resize to fit in `size` (H, W) keeping the aspect ratio, without padding -> (resized, r).

    This is the official `COCODataset.load_resized_img` (what `pull_item` returns and the image
    cache holds) and the resize of each mosaic tile; boxes of the source image are multiplied by
    r. Output [int(h*r), int(w*r), 3]; an image already of that size is returned as it is (cv2's
    same-size INTER_LINEAR resize is a copy).
    """
    img = to_bgr(img)
    r = letterbox_ratio(img.shape[:2], size)
    # max(1, .): a 1000:1 strip would otherwise round to 0 pixels and make cv2 fail.
    new_wh = (max(1, int(img.shape[1] * r)), max(1, int(img.shape[0] * r)))
    if new_wh == (img.shape[1], img.shape[0]):
        return img, r
    resized = cv2.resize(img, new_wh, interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    return resized, r


def letterbox(
    img: np.ndarray, size: Sequence[int], pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, float]:
    """Official `preproc` in HWC uint8: [h, w, 3] (or gray/BGRA) -> ([H, W, 3] uint8, r)."""
    height, width = _check_size(size)
    resized, r = resize_fit(img, (height, width))
    padded = np.full((height, width, 3), pad_value, dtype=np.uint8)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    return padded, r


def legacy_normalize(img_bgr: np.ndarray) -> np.ndarray:
    """[..., 3] BGR 0..255 -> float32 RGB, /255, minus ImageNet mean, over std (legacy models).

    Same arithmetic as the official in-place float32 ops (float64 mean/std, rounded to float32
    after each step), so results are bit-identical.
    """
    x = np.ascontiguousarray(img_bgr[..., ::-1], dtype=np.float32)
    x /= np.float32(255.0)
    x = (x.astype(np.float64) - LEGACY_MEAN).astype(np.float32)
    x = (x.astype(np.float64) / LEGACY_STD).astype(np.float32)
    return x


def val_preprocess(img: np.ndarray, size: Sequence[int], legacy: bool = False) -> np.ndarray:
    """Official `ValTransform` in HWC: image -> [H, W, 3] float32 (BGR 0..255, or legacy).

    The ratio to undo the resize is `letterbox_ratio(img.shape[:2], size)`.
    """
    padded, _ = letterbox(img, size)
    if legacy:
        return legacy_normalize(padded)
    return padded.astype(np.float32)
