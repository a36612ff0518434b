"""The one image decoder of the project (inference, demo, evaluation, training, shards).

`cv2.imread` returns None, silently, for a missing file, a folder or bytes it cannot decode; every
caller would then fail later with an unrelated error. `read_image` names the file instead.

Files and packed shards decode the same way: `read_image(path)` reads the file's bytes (locally,
or through `etils.epath` for `gs://`-style URLs) and hands them to `decode_image`, which is
`cv2.imdecode(IMREAD_COLOR)`: the same pixels as `cv2.imread(path, IMREAD_COLOR)` (same libjpeg
path, EXIF orientation applied the same way; checked on every shared COCO / VOC image).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from yolox_jax.data import paths


class UnreadableImageError(RuntimeError):
    """An image file that is missing or that OpenCV cannot decode (the message names the file)."""


def decode_image(data: bytes | np.ndarray, name: str = "image") -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ... as stored on disk) -> [h, w, 3] BGR uint8.

    Gray and 4-channel images come back as 3-channel BGR (IMREAD_COLOR converts them), as
    `cv2.imread` does. Raises UnreadableImageError naming `name` when OpenCV cannot decode them.
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) \
        else np.asarray(data, np.uint8).reshape(-1)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None or img.size == 0:
        raise UnreadableImageError(
            f"image {name} ({buf.size} bytes) cannot be decoded by OpenCV (not an image, or "
            "truncated)"
        )
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The file's bytes -> `decode_image`: as `cv2.imread(path, IMREAD_COLOR)` -> [h, w, 3] BGR.

    `path` may be local, `file://` or any URL `etils.epath` reads. Raises UnreadableImageError
    naming the path when it is missing, not a file, or undecodable.
    """
    path = os.fspath(path)
    if paths.is_url(path):
        try:
            data = paths.read_bytes(path)
        except (OSError, ValueError) as e:
            raise UnreadableImageError(f"image file {path!r} cannot be read: {e}") from e
    else:
        local = paths.local(path)
        if not os.path.isfile(local):
            what = "is not a file" if os.path.exists(local) else "does not exist"
            raise UnreadableImageError(f"image file {path!r} {what}")
        data = np.fromfile(local, np.uint8)
    try:
        return decode_image(data, repr(path))
    except UnreadableImageError:
        raise UnreadableImageError(
            f"image file {path!r} cannot be decoded by OpenCV (not an image, or truncated)"
        ) from None
