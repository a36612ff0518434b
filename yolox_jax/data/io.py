"""The one image reader of the project (inference, demo, evaluation and the training cache).

`cv2.imread` returns None, silently, for a missing file, a folder or bytes it cannot decode; every
caller would then fail later with an unrelated error. `read_image` names the file instead.
"""

from __future__ import annotations

import os

import cv2
import numpy as np


class UnreadableImageError(RuntimeError):
    """An image file that is missing or that OpenCV cannot decode (the message names the file)."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """`cv2.imread(path, IMREAD_COLOR)`, as the official loaders -> [h, w, 3] BGR uint8.

    Gray and 4-channel files come back as 3-channel BGR (IMREAD_COLOR converts them).
    Raises UnreadableImageError naming the path when it is missing, not a file, or undecodable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise UnreadableImageError(f"image file {path!r} {what}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise UnreadableImageError(
            f"image file {path!r} cannot be decoded by OpenCV (not an image, or truncated)"
        )
    return img
