"""Drawing detections in the official `yolox.utils.vis` style (same palette, font, label box).

Keeping the look identical means a demo image from this project and one from the official
`tools/demo.py` can be compared side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# The official 80-entry palette (RGB-like floats in 0..1, used as BGR by cv2 as the official does).
PALETTE = np.array(
    [
        (0, 0.447, 0.741), (0.85, 0.325, 0.098), (0.929, 0.694, 0.125), (0.494, 0.184, 0.556),
        (0.466, 0.674, 0.188), (0.301, 0.745, 0.933), (0.635, 0.078, 0.184), (0.3, 0.3, 0.3),
        (0.6, 0.6, 0.6), (1, 0, 0), (1, 0.5, 0), (0.749, 0.749, 0),
        (0, 1, 0), (0, 0, 1), (0.667, 0, 1), (0.333, 0.333, 0),
        (0.333, 0.667, 0), (0.333, 1, 0), (0.667, 0.333, 0), (0.667, 0.667, 0),
        (0.667, 1, 0), (1, 0.333, 0), (1, 0.667, 0), (1, 1, 0),
        (0, 0.333, 0.5), (0, 0.667, 0.5), (0, 1, 0.5), (0.333, 0, 0.5),
        (0.333, 0.333, 0.5), (0.333, 0.667, 0.5), (0.333, 1, 0.5), (0.667, 0, 0.5),
        (0.667, 0.333, 0.5), (0.667, 0.667, 0.5), (0.667, 1, 0.5), (1, 0, 0.5),
        (1, 0.333, 0.5), (1, 0.667, 0.5), (1, 1, 0.5), (0, 0.333, 1),
        (0, 0.667, 1), (0, 1, 1), (0.333, 0, 1), (0.333, 0.333, 1),
        (0.333, 0.667, 1), (0.333, 1, 1), (0.667, 0, 1), (0.667, 0.333, 1),
        (0.667, 0.667, 1), (0.667, 1, 1), (1, 0, 1), (1, 0.333, 1),
        (1, 0.667, 1), (0.333, 0, 0), (0.5, 0, 0), (0.667, 0, 0),
        (0.833, 0, 0), (1, 0, 0), (0, 0.167, 0), (0, 0.333, 0),
        (0, 0.5, 0), (0, 0.667, 0), (0, 0.833, 0), (0, 1, 0),
        (0, 0, 0.167), (0, 0, 0.333), (0, 0, 0.5), (0, 0, 0.667),
        (0, 0, 0.833), (0, 0, 1), (0, 0, 0), (0.143, 0.143, 0.143),
        (0.286, 0.286, 0.286), (0.429, 0.429, 0.429), (0.571, 0.571, 0.571), (0.714, 0.714, 0.714),
        (0.857, 0.857, 0.857), (0, 0.447, 0.741), (0.314, 0.717, 0.741), (0.5, 0.5, 0),
    ],
    dtype=np.float32,
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.4


def class_color(cls_id: int) -> np.ndarray:
    """Palette entry [3] in 0..1 for a class (cycled past 80 so custom datasets never index out)."""
    return PALETTE[int(cls_id) % len(PALETTE)]


def draw_detections(
    img: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    score_thr: float = 0.5,
) -> np.ndarray:
    """Draw boxes [K, 4] x1y1x2y2 (image pixels), scores [K], classes [K] onto `img` (in place).

    Official `vis`: boxes with score < `score_thr` are skipped; corners truncated with int();
    a 2 px box, a filled label box in 0.7x the class colour, and "name:xx.x%" text.
    Returns `img` (BGR uint8 [H, W, 3]).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if not (len(boxes) == len(scores) == len(classes)):
        raise ValueError(
            f"boxes {boxes.shape}, scores {scores.shape} and classes {classes.shape} must have "
            "the same length"
        )
    for box, score, cls in zip(boxes, scores, classes, strict=True):
        if score < score_thr:
            continue
        cls_id = int(cls)
        x0, y0, x1, y1 = (int(v) for v in box)
        rgb = class_color(cls_id)
        color = (rgb * 255).astype(np.uint8).tolist()
        name = class_names[cls_id] if 0 <= cls_id < len(class_names) else str(cls_id)
        text = f"{name}:{score * 100:.1f}%"
        txt_color = (0, 0, 0) if np.mean(rgb) > 0.5 else (255, 255, 255)
        txt_w, txt_h = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0]
        cv2.rectangle(img, (x0, y0), (x1, y1), color, 2)
        bg = (rgb * 255 * 0.7).astype(np.uint8).tolist()
        cv2.rectangle(img, (x0, y0 + 1), (x0 + txt_w + 1, y0 + int(1.5 * txt_h)), bg, -1)
        cv2.putText(img, text, (x0, y0 + txt_h), _FONT, _FONT_SCALE, txt_color, thickness=1)
    return img
