"""Batched, jitted inference: letterbox on the host, one compiled forward + postprocess on device.

`Predictor` takes BGR uint8 images of any sizes and returns detections in original-image pixels,
exactly as the official `tools/demo.py` / `COCOEvaluator` get them (`ValTransform`, decoded head
output, `postprocess`, boxes divided by the letterbox ratio, not clipped). Shapes are fixed per
bucket so that serving a new batch size, or changing the thresholds, does not recompile:

* batches are padded to the next size in `batch_buckets` (rounded up to a multiple of the local
  device count; larger inputs are split into chunks of the largest bucket);
* `conf` / `nms` are traced float32 scalars;
* the batch is sharded over every local device (a 1-D mesh, axis "data"), the weights replicated.

An exported `.onnx` (`load_model` / `Predictor.from_checkpoint`) runs its network in onnxruntime
or OpenVINO on the host instead; letterbox, postprocess (`make_finish_fn`) and `ImageDetections`
are the same code.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from yolox_jax.data.io import read_image
from yolox_jax.data.transforms import legacy_normalize, letterbox, to_bgr
from yolox_jax.ops.nms import nms_threshold_f32
from yolox_jax.ops.postprocess import Detections, official_rows, postprocess
from yolox_jax.sharding import batch_sharding, make_mesh, replicated


class CandidateOverflowWarning(UserWarning):
    """Some images had more candidates than `pre_nms_topk` (results may differ from official)."""


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image, in that image's pixels (K detections, descending score).

    boxes [K, 4] x1y1x2y2 float32 (not clipped, as the official eval); scores [K] = obj * cls_conf;
    classes [K] int32 (contiguous model classes); obj, cls_conf [K]; ratio: the letterbox scale
    the boxes were divided by; image_hw: the source image (height, width); num_candidates /
    num_kept: anchors passing conf / boxes NMS kept (before the pre_nms_topk / max_det cuts).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    obj: np.ndarray
    cls_conf: np.ndarray
    ratio: float
    image_hw: tuple[int, int]
    num_candidates: int = 0
    num_kept: int = 0

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def rows(self) -> np.ndarray:
        """[K, 7] float32 in the official `postprocess` row layout (x1, y1, x2, y2, obj, cls_conf,
        cls), boxes already in image pixels (the official `output[:, :4] / ratio`)."""
        return official_rows(self.boxes, self.obj, self.cls_conf, self.classes)

    def to_json(self, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """JSON-ready list of {"bbox": [x1, y1, x2, y2], "score", "class_id", "class"?, ...}."""
        out = []
        for i in range(len(self)):
            d: dict[str, Any] = {
                "bbox": [float(v) for v in self.boxes[i]],
                "score": float(self.scores[i]),
                "class_id": int(self.classes[i]),
                "obj": float(self.obj[i]),
                "cls_conf": float(self.cls_conf[i]),
            }
            if class_names is not None and 0 <= int(self.classes[i]) < len(class_names):
                d["class"] = str(class_names[int(self.classes[i])])
            out.append(d)
        return out


def make_finish_fn(
    *,
    class_agnostic: bool = False,
    pre_nms_topk: int = 1000,
    max_det: int = 300,
    num_classes: int | None = None,
    raw_hw: Sequence[int] | None = None,
) -> Callable[..., Detections]:
    """The one head-output -> detections step of every backend, pure and jittable:
    `finish(outputs [B, N, 5 + C], ratios [B], conf, nms) -> Detections` in source pixels.

    outputs: decoded (cx, cy, w, h, obj, cls probs), or, with `raw_hw` (the network input
    (H, W)), the official raw ONNX layout (xy cell offsets, log wh, sigmoided scores), decoded
    here with the model's anchor grid. `num_classes` < C: only the first `num_classes` class
    scores are used, as the official `postprocess(num_classes=...)` slices them.
    """
    grid = strides = None
    if raw_hw is not None:
        from yolox_jax.models.head import STRIDES, anchor_grid

        h, w = int(raw_hw[0]), int(raw_hw[1])
        grid, strides = anchor_grid([(h // s, w // s) for s in STRIDES])

    def finish(outputs: jax.Array, ratios: jax.Array, conf: jax.Array, nms: jax.Array
               ) -> Detections:
        decoded = outputs.astype(jnp.float32)
        if grid is not None:
            from yolox_jax.models.head import decode_boxes

            boxes = decode_boxes(decoded[..., :4], jnp.asarray(grid), jnp.asarray(strides))
            decoded = jnp.concatenate([boxes, decoded[..., 4:]], axis=-1)
        if num_classes is not None:
            decoded = decoded[..., : 5 + int(num_classes)]
        det = postprocess(
            decoded, conf, nms, class_agnostic=class_agnostic,
            pre_nms_topk=pre_nms_topk, max_det=max_det,
        )
        scale = ratios.astype(jnp.float32)[:, None, None]
        return det._replace(boxes=det.boxes / scale)

    return finish


def make_predict_fn(
    model: Any,
    *,
    class_agnostic: bool = False,
    pre_nms_topk: int = 1000,
    max_det: int = 300,
    num_classes: int | None = None,
) -> Callable[..., Detections]:
    """The pure, jittable `predict_fn(variables, images, ratios, conf, nms) -> Detections`.

    images [B, H, W, 3] (uint8 or float32, BGR 0..255, or legacy-normalised float32), ratios [B]
    (letterbox scale per image), conf / nms float32 scalars (pass `nms_threshold_f32(nms)` for the
    exact torchvision double comparison). The network runs in the model's dtype, postprocess in
    float32 (`make_finish_fn`); boxes of the result are divided by the ratios (original-image
    pixels, float32 as the official `bboxes /= scale`).
    """
    finish = make_finish_fn(class_agnostic=class_agnostic, pre_nms_topk=pre_nms_topk,
                            max_det=max_det, num_classes=num_classes)

    def predict_fn(
        variables: Any, images: jax.Array, ratios: jax.Array, conf: jax.Array, nms: jax.Array
    ) -> Detections:
        x = images.astype(jnp.float32)
        decoded = model.apply(variables, x, train=False)  # [B, N, 5 + C]
        return finish(decoded, ratios, conf, nms)

    return predict_fn


def is_host_model(model: Any) -> bool:
    """True for an exported model run by a host runtime (`export.runtime.OnnxModel`)."""
    return bool(getattr(model, "runs_on_host", False))


def num_anchors(input_size: Sequence[int]) -> int:
    """Anchors of a YOLOX head for an (H, W) input: sum over strides 8/16/32 of (H/s) * (W/s)."""
    h, w = int(input_size[0]), int(input_size[1])
    return sum((h // s) * (w // s) for s in (8, 16, 32))


def _bucket_sizes(buckets: Iterable[int], num_devices: int) -> tuple[int, ...]:
    sizes = sorted({int(b) for b in buckets})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_buckets must be positive sizes, got {tuple(buckets)!r}")
    return tuple(sorted({-(-b // num_devices) * num_devices for b in sizes}))


class Predictor:
    """Detect objects in BGR uint8 images of any sizes with one jitted function per bucket.

    `predictor(images)` -> one `ImageDetections` per image (original-image pixels). Images may
    also be file paths (read with cv2). The host side (read, letterbox) runs in a thread pool.

    input_size (H, W): None -> the config's `data.test_size`, else (416, 416); legacy None ->
    the config's `data.legacy`, else False (`config`: the checkpoint's, kept as `.config`).
    pre_nms_topk None -> every anchor (never truncates, exactly the official result); max_det
    None -> every detection NMS keeps (no cap, as the official eval). dtype "bfloat16" runs the
    network in bf16 (weights stay float32), postprocess stays float32. devices: default
    `jax.local_devices()`.

    `model` may also be an exported ONNX model (`export.runtime.OnnxModel`, `variables` None): the
    network then runs in onnxruntime / OpenVINO on NCHW float32 batches (the file's input size and,
    if static, batch size), followed by the same jitted postprocess. `fold_bn` folds BatchNorm into
    the convs of a Flax model first (`export.fold_batchnorm`; same results to float rounding).
    """

    def __init__(
        self,
        model: Any,
        variables: Any,
        input_size: Sequence[int] | None = None,
        conf: float = 0.3,
        nms: float = 0.45,
        class_agnostic: bool = False,
        pre_nms_topk: int | None = 1000,
        max_det: int | None = 300,
        legacy: bool | None = None,
        dtype: str | Any = "float32",
        batch_buckets: Sequence[int] = (1, 8, 32),
        num_classes: int | None = None,
        config: ml_collections.ConfigDict | None = None,
        devices: Sequence[Any] | None = None,
        num_threads: int = 4,
        fold_bn: bool = False,
    ) -> None:
        host = is_host_model(model)
        if host:
            if input_size is not None and tuple(input_size) != tuple(model.input_hw):
                raise ValueError(f"{model.path} takes {model.input_hw[0]}x{model.input_hw[1]} "
                                 f"inputs (fixed at export), not {tuple(input_size)!r}")
            if jnp.dtype(dtype) != jnp.float32:
                raise ValueError(f"{model.path}: an ONNX model runs in float32, not {dtype}")
            input_size = model.input_hw
        if input_size is None:
            input_size = tuple(config.data.test_size) if config is not None else (416, 416)
        if len(input_size) != 2 or input_size[0] % 32 or input_size[1] % 32:
            raise ValueError(
                f"input_size must be (height, width), multiples of 32, got {tuple(input_size)!r}"
            )
        self.input_size = (int(input_size[0]), int(input_size[1]))
        n_anchors = num_anchors(self.input_size)
        self.pre_nms_topk = n_anchors if pre_nms_topk is None else min(int(pre_nms_topk), n_anchors)
        self.max_det = n_anchors if max_det is None else int(max_det)
        self.conf = float(conf)
        self.nms = float(nms)
        self.class_agnostic = bool(class_agnostic)
        if legacy is None:
            legacy = bool(config.data.get("legacy", False)) if config is not None else False
        self.legacy = bool(legacy)
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.num_threads = int(num_threads)
        self.host = host
        if not host and fold_bn:
            from yolox_jax.export.fold import fold_batchnorm, is_folded

            if not is_folded(variables):
                variables = fold_batchnorm(variables, model)
        if not host and self.dtype != jnp.dtype(model.dtype):
            if config is not None:
                from yolox_jax.models.yolox import build_model

                model = build_model(config, num_classes=model.num_classes, dtype=self.dtype)
            else:
                model = model.clone(dtype=self.dtype)
        self.model = model
        model_classes = int(model.num_classes)
        if num_classes is not None and not 1 <= int(num_classes) <= model_classes:
            raise ValueError(
                f"num_classes must be in 1..{model_classes} (the model's), got {num_classes}"
            )
        self.num_classes = model_classes if num_classes is None else int(num_classes)

        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = make_mesh(self.devices)
        self.data_sharding = batch_sharding(self.mesh)  # inputs [B, ...] and detections
        self.replicated_sharding = replicated(self.mesh)  # the weights, the thresholds
        num_classes_arg = None if self.num_classes == model_classes else self.num_classes
        self._forward_jit: Callable[..., Any] | None = None
        if host:  # the network on the host runtime, then the same postprocess, jitted
            self.buckets = (model.batch,) if model.batch is not None else _bucket_sizes(
                batch_buckets, 1)
            self.variables = None
            self.predict_fn = None
            self._jitted = jax.jit(make_finish_fn(
                class_agnostic=self.class_agnostic, pre_nms_topk=self.pre_nms_topk,
                max_det=self.max_det, num_classes=num_classes_arg,
                raw_hw=None if model.decoded else self.input_size,
            ))
        else:
            self.buckets = _bucket_sizes(batch_buckets, len(self.devices))
            self.variables = jax.device_put(variables, self.replicated_sharding)
            self.predict_fn = make_predict_fn(
                model,
                class_agnostic=self.class_agnostic,
                pre_nms_topk=self.pre_nms_topk,
                max_det=self.max_det,
                num_classes=num_classes_arg,
            )
            self._jitted = jax.jit(
                self.predict_fn,
                in_shardings=(self.replicated_sharding, self.data_sharding, self.data_sharding,
                              self.replicated_sharding, self.replicated_sharding),
                out_shardings=self.data_sharding,
            )
        self._pool: ThreadPoolExecutor | None = None
        self.images_seen = 0
        self.images_over_topk = 0
        self.images_over_max_det = 0

    # ------------------------------------------------------------------ host side
    def preprocess(self, image: np.ndarray | str | os.PathLike) -> tuple[np.ndarray, float, tuple]:
        """One image (array or path) -> (network input [H, W, 3], ratio, source (h, w)).

        Non-legacy inputs stay uint8 (4x less to transfer; the cast is exact on device).
        """
        if isinstance(image, (str, os.PathLike)):
            img = read_image(image)
        else:
            img = to_bgr(np.asarray(image))
        x, ratio = letterbox(img, self.input_size)
        if self.legacy:  # = val_preprocess(img, size, legacy=True), float32 RGB normalised
            x = legacy_normalize(x)
        return x, float(ratio), (int(img.shape[0]), int(img.shape[1]))

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.num_threads))
        return self._pool

    def close(self) -> None:
        """Stop the preprocessing threads (the predictor stays usable: they restart on demand)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def set_variables(self, variables: Any) -> None:
        """New weights of the same shapes (e.g. the trainer's EMA after an epoch), replicated
        on the mesh: the compiled programs are reused."""
        if self.host:
            raise ValueError(f"{self.model.path}: an ONNX model's weights are in the file")
        self.variables = jax.device_put(variables, self.replicated_sharding)

    def bucket_for(self, n: int) -> int:
        """Padded batch size for n images (n <= the largest bucket)."""
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"batch of {n} exceeds the largest bucket {self.buckets[-1]}")

    # ------------------------------------------------------------------ device side
    def run_batch(self, inputs: np.ndarray, ratios: np.ndarray,
                  conf: float | None = None, nms: float | None = None) -> Detections:
        """inputs [n, H, W, 3], ratios [n] -> Detections [bucket, ...] (device, asynchronous).

        Pads to the bucket size (padding rows get ratio 1 and are to be ignored).
        """
        n = inputs.shape[0]
        if inputs.shape[1:] != (*self.input_size, 3):
            raise ValueError(
                f"inputs must be [n, {self.input_size[0]}, {self.input_size[1]}, 3], "
                f"got {inputs.shape}"
            )
        b = self.bucket_for(n)
        if b > n:
            pad = np.zeros((b - n, *inputs.shape[1:]), inputs.dtype)
            inputs = np.concatenate([inputs, pad])
            ratios = np.concatenate([ratios, np.ones(b - n, ratios.dtype)])
        conf_v = np.float32(self.conf if conf is None else conf)
        nms_v = nms_threshold_f32(self.nms if nms is None else nms)
        if self.host:
            outputs = self.model(to_nchw(inputs))
            return self._jitted(outputs, np.asarray(ratios, np.float32), conf_v, nms_v)
        images = jax.device_put(inputs, self.data_sharding)
        scale = jax.device_put(np.asarray(ratios, np.float32), self.data_sharding)
        return self._jitted(self.variables, images, scale, conf_v, nms_v)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """The network alone on prepared inputs [n, H, W, 3] (n a bucket size) -> its outputs
        [n, A, 5 + C] on the host (blocks); for timing the forward pass apart from NMS."""
        if self.host:
            return self.model(to_nchw(inputs))
        if self._forward_jit is None:
            model = self.model
            self._forward_jit = jax.jit(
                lambda v, x: model.apply(v, x.astype(jnp.float32), train=False))
        x = jax.device_put(inputs, self.data_sharding)
        return np.asarray(self._forward_jit(self.variables, x))

    def unpack(self, det: Detections, ratios: Sequence[float],
               shapes: Sequence[tuple[int, int]]) -> list[ImageDetections]:
        """Device Detections -> the first len(ratios) images' ImageDetections (blocks).

        Counts images over `pre_nms_topk` / `max_det` in `images_over_topk` / `images_over_max_det`
        (see `warn_overflow`).
        """
        host = jax.device_get(det)
        n = len(ratios)
        out = []
        for i in range(n):
            k = int(host.num_valid[i])
            out.append(ImageDetections(
                boxes=np.asarray(host.boxes[i, :k], np.float32),
                scores=np.asarray(host.scores[i, :k], np.float32),
                classes=np.asarray(host.classes[i, :k], np.int32),
                obj=np.asarray(host.obj[i, :k], np.float32),
                cls_conf=np.asarray(host.cls_conf[i, :k], np.float32),
                ratio=float(ratios[i]),
                image_hw=tuple(shapes[i]),
                num_candidates=int(host.num_candidates[i]),
                num_kept=int(host.num_kept[i]),
            ))
        self.images_seen += n
        self.images_over_topk += int(np.sum(host.num_candidates[:n] > self.pre_nms_topk))
        self.images_over_max_det += int(np.sum(host.num_kept[:n] > self.max_det))
        return out

    def warn_overflow(self, results: Sequence[ImageDetections], stacklevel: int = 2) -> None:
        """One warning for a set of results if any image was cut by pre_nms_topk or max_det."""
        over_topk = [r.num_candidates for r in results if r.num_candidates > self.pre_nms_topk]
        over_det = sum(r.num_kept > self.max_det for r in results)
        if over_topk:
            warnings.warn(
                f"{len(over_topk)} of {len(results)} images had more than pre_nms_topk="
                f"{self.pre_nms_topk} candidates (max {max(over_topk)}); only the best "
                f"{self.pre_nms_topk} entered NMS, so results may differ from the official "
                "postprocess (raise pre_nms_topk, or pass None for all anchors)",
                CandidateOverflowWarning,
                stacklevel=stacklevel + 1,
            )
        if over_det:
            warnings.warn(
                f"{over_det} of {len(results)} images kept more than max_det={self.max_det} "
                "detections after NMS; the lowest-scoring ones were dropped (max_det=None keeps "
                "all)",
                CandidateOverflowWarning,
                stacklevel=stacklevel + 1,
            )

    def __call__(
        self,
        images: Sequence[np.ndarray | str | os.PathLike] | np.ndarray,
        conf: float | None = None,
        nms: float | None = None,
    ) -> list[ImageDetections]:
        """Images (BGR uint8 arrays of any sizes, or paths) -> one ImageDetections per image.

        A single [h, w, 3] (or gray [h, w]) array counts as one image; a [B, h, w, 3] array as B
        images. `conf` / `nms` override the thresholds for this call (no recompilation). Warns
        once per call (CandidateOverflowWarning) if an image was cut by pre_nms_topk / max_det.
        """
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            images = [images]
        images = list(images)
        if not images:
            return []
        prepared = list(self.pool.map(self.preprocess, images))
        biggest = self.buckets[-1]
        pending = []
        for start in range(0, len(prepared), biggest):  # all chunks dispatched before any wait
            chunk = prepared[start:start + biggest]
            inputs = np.stack([c[0] for c in chunk])
            ratios = np.array([c[1] for c in chunk], np.float64)
            pending.append((self.run_batch(inputs, ratios, conf, nms), chunk))
        results: list[ImageDetections] = []
        for det, chunk in pending:
            results.extend(self.unpack(det, [c[1] for c in chunk], [c[2] for c in chunk]))
        self.warn_overflow(results)
        return results

    def cache_size(self) -> int:
        """Compiled executables of the jitted function (one per bucket size used)."""
        return int(self._jitted._cache_size())

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike | Path, config: Any = None, backend: str = "auto",
        **kwargs: Any
    ) -> Predictor:
        """Load an exported folder / training workdir / official .pth / .onnx file (onnxruntime
        or OpenVINO: `backend`) and wrap it: what every command builds its predictor with.
        `config`: a config (file, variant name) instead of the checkpoint's; its test_size and
        legacy flag are the defaults (`input_size` / `legacy` None)."""
        model, variables, cfg = load_model(path, config, backend=backend)
        return cls(model, variables, config=cfg, **kwargs)


def to_nchw(inputs: np.ndarray) -> np.ndarray:
    """Prepared inputs [n, H, W, 3] (uint8 or float32) -> the official ONNX input [n, 3, H, W]
    float32 (what `ValTransform` returns per image)."""
    return np.ascontiguousarray(np.transpose(inputs, (0, 3, 1, 2)), dtype=np.float32)


def load_model(
    path: str | os.PathLike | Path, config: Any = None, backend: str = "auto"
) -> tuple[Any, Any, ml_collections.ConfigDict]:
    """(model, variables, config) for any checkpoint `Predictor` runs: a `.onnx` file gives an
    `OnnxModel` on `backend` and variables None; anything else goes to `load_checkpoint`."""
    from yolox_jax.export.runtime import is_onnx_path, load_onnx

    if is_onnx_path(path):
        model, cfg = load_onnx(path, config, backend=backend)
        return model, None, cfg
    from yolox_jax.weights.checkpoint import load_checkpoint

    return load_checkpoint(path, config)
