"""Run a `Predictor` over a dataset and score it (COCO or VOC), with timing.

Timing: the forward pass and NMS are one compiled XLA program, so `inference_ms` (per image, the
device time of full batches from dispatch to results on the host, batches that compiled
excluded) covers both; `split_timing` also times a forward-only program on one full batch
afterwards, giving `forward_ms` and `nms_ms = inference_ms - forward_ms`. `images_per_s` is
end-to-end (reading, letterbox, inference, transfer) over the same batches. Host preprocessing of
batch i + 1 runs in the predictor's threads while batch i is on the device.

Multi-device / multi-host: the predictor shards each batch over the process's local devices.
With several processes each one predicts the images `process_index::process_count` of the
record list (read from the image files, or from a packed shard set's records when the dataset
has `images`); the detections are packed into padded arrays and gathered
(`multihost_utils.process_allgather`: every process holds all of them afterwards), process 0
alone scores them (pycocotools / the VOC metric) and sends the statistics to the others, so
every process returns the same numbers.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from yolox_jax.data.readers import DatasetInfo
from yolox_jax.data.transforms import letterbox_ratio
from yolox_jax.inference import ImageDetections, Predictor

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """stats: the metric numbers plus timing; detections: one per record, in record order."""

    stats: dict[str, Any]
    detections: list[ImageDetections]


# ------------------------------------------------------------------------------ prediction
def _prepare(predictor: Predictor, item: Any) -> Any:
    return predictor.preprocess(item() if callable(item) else item)


def predict_paths(
    predictor: Predictor,
    paths: Sequence[Any],
    batch_size: int = 8,
    progress: bool = True,
    split_timing: bool = False,
    desc: str = "eval",
) -> tuple[list[ImageDetections], dict[str, float]]:
    """Images -> (detections in order, timing). Items are paths, BGR arrays, or zero-argument
    callables returning one (lazy reads, e.g. from shards), read in the predictor's threads.
    Batches of at most `batch_size` (capped at the predictor's largest bucket)."""
    from tqdm import tqdm

    bs = max(1, min(int(batch_size), predictor.buckets[-1]))
    batches = [list(paths[i:i + bs]) for i in range(0, len(paths), bs)]
    pool = predictor.pool
    submit = lambda batch: [pool.submit(_prepare, predictor, p) for p in batch]
    results: list[ImageDetections] = []
    device_s = wall_s = 0.0
    timed_images = timed_full = compiled = 0
    device_full_s = 0.0
    last_full: tuple[np.ndarray, np.ndarray] | None = None
    nxt = submit(batches[0]) if batches else []
    t_prev = time.perf_counter()
    for bi in tqdm(range(len(batches)), desc=desc, disable=not progress, unit="batch"):
        prepared = [f.result() for f in nxt]
        if bi + 1 < len(batches):
            nxt = submit(batches[bi + 1])
        inputs = np.stack([p[0] for p in prepared])
        ratios = np.array([p[1] for p in prepared], np.float64)
        before = predictor.cache_size()
        t0 = time.perf_counter()
        det = predictor.run_batch(inputs, ratios)
        out = predictor.unpack(det, ratios, [p[2] for p in prepared])
        t1 = time.perf_counter()
        results.extend(out)
        if predictor.cache_size() != before:
            compiled += 1
        else:
            device_s += t1 - t0
            wall_s += t1 - t_prev
            timed_images += len(out)
            if len(out) == predictor.bucket_for(len(out)):
                device_full_s += t1 - t0
                timed_full += len(out)
                last_full = (inputs, ratios)
        t_prev = time.perf_counter()
    predictor.warn_overflow(results)
    nan = float("nan")
    timing: dict[str, float] = {  # the same keys on every process (they are gathered)
        "images": float(len(results)),
        "timed_images": float(timed_images),
        "compiled_batches": float(compiled),
        "device_s": device_s,
        "wall_s": wall_s,
        "inference_ms": (1000.0 * device_full_s / timed_full if timed_full
                         else 1000.0 * device_s / timed_images if timed_images else nan),
        "images_per_s": timed_images / wall_s if timed_images and wall_s > 0 else nan,
        "forward_ms": nan,
        "nms_ms": nan,
    }
    if split_timing and last_full is not None:
        timing["forward_ms"] = forward_ms_per_image(predictor, last_full[0])
        timing["nms_ms"] = max(0.0, timing["inference_ms"] - timing["forward_ms"])
    return results, timing


def forward_ms_per_image(predictor: Predictor, inputs: np.ndarray, repeats: int = 3) -> float:
    """Median time of the network alone on a full batch [B, H, W, 3], per image (compiles once;
    an ONNX predictor times its runtime's forward)."""
    predictor.forward(inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.forward(inputs)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / inputs.shape[0]


# ------------------------------------------------------------------------------ multi-host
def pack_detections(
    detections: Sequence[ImageDetections], indices: Sequence[int]
) -> dict[str, np.ndarray]:
    """Detections of some images -> arrays: images int32 [n, 5] (record index, h, w,
    num_candidates, num_kept); rows float32 [M, 7] (`ImageDetections.rows`: x1, y1, x2, y2, obj,
    cls_conf, cls); scores float32 [M]; row_ids int32 [M] (record index)."""
    images = np.array(
        [[i, d.image_hw[0], d.image_hw[1], d.num_candidates, d.num_kept]
         for i, d in zip(indices, detections, strict=True)], np.int32,
    ).reshape(-1, 5)
    ids = [np.full(len(d), i, np.int32) for i, d in zip(indices, detections, strict=True)]
    return {
        "images": images,
        "rows": np.concatenate([d.rows() for d in detections] + [np.zeros((0, 7), np.float32)]),
        "scores": np.concatenate([d.scores for d in detections] + [np.zeros(0, np.float32)]
                                 ).astype(np.float32),
        "row_ids": np.concatenate(ids + [np.zeros(0, np.int32)]),
    }


def unpack_detections(
    packed: dict[str, np.ndarray], num_images: int, input_size: Sequence[int]
) -> list[ImageDetections]:
    """Inverse of `pack_detections` over all images (each record index exactly once; rows of
    one image keep their order). The letterbox ratio is recomputed from the image size."""
    images, rows, ids = packed["images"], packed["rows"], packed["row_ids"]
    got = np.sort(images[:, 0])
    if not np.array_equal(got, np.arange(num_images)):
        raise ValueError(f"gathered detections cover {len(got)} image slots, expected each of "
                         f"0..{num_images - 1} once")
    order = np.argsort(ids, kind="stable")
    rows, scores, ids = rows[order], packed["scores"][order], ids[order]
    bounds = np.searchsorted(ids, np.arange(num_images + 1))
    out: list[ImageDetections | None] = [None] * num_images
    for i, h, w, nc, nk in images.tolist():
        r = rows[bounds[i]:bounds[i + 1]]
        out[i] = ImageDetections(
            boxes=r[:, :4].copy(), scores=scores[bounds[i]:bounds[i + 1]].copy(),
            obj=r[:, 4].copy(), cls_conf=r[:, 5].copy(), classes=r[:, 6].astype(np.int32),
            ratio=float(letterbox_ratio((h, w), input_size)), image_hw=(h, w),
            num_candidates=nc, num_kept=nk,
        )
    return out  # type: ignore[return-value]


def gather_detections(
    packed: dict[str, np.ndarray], gather_fn: Callable[[Any], Any] | None = None
) -> dict[str, np.ndarray]:
    """Every process's packed arrays -> all of them concatenated (on every process). Arrays are
    padded to the largest process's size first, as `process_allgather` needs equal shapes."""
    if gather_fn is None:
        from jax.experimental.multihost_utils import process_allgather as gather_fn
    sizes = np.asarray(gather_fn(np.array([len(packed[k]) for k in sorted(packed)], np.int32)))
    sizes = sizes.reshape(-1, len(packed))  # [P, num arrays]
    padded = {}
    for j, k in enumerate(sorted(packed)):
        a = packed[k]
        pad = np.zeros((int(sizes[:, j].max()) - len(a), *a.shape[1:]), a.dtype)
        padded[k] = np.concatenate([a, pad])
    stacked = gather_fn(padded)
    return {
        k: np.concatenate([np.asarray(stacked[k][p])[: sizes[p, j]] for p in range(len(sizes))])
        for j, k in enumerate(sorted(packed))
    }


# ------------------------------------------------------------------------------ evaluation
def share_from_process0(obj: Any, process_index: int,
                        gather_fn: Callable[[Any], Any] | None = None) -> Any:
    """A json-able object computed on process 0 -> the same object on every process (two
    allgathers: the byte count, then the bytes padded to it)."""
    if gather_fn is None:
        from jax.experimental.multihost_utils import process_allgather as gather_fn
    payload = json.dumps(obj, default=_json_default).encode() if process_index == 0 else b""
    sizes = np.asarray(gather_fn(np.array([len(payload)], np.int32))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    rows = np.asarray(gather_fn(buf)).reshape(len(sizes), -1)
    return json.loads(rows[0, : int(sizes[0])].tobytes())


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot send {type(v).__name__} to the other processes")


def _image_items(info: DatasetInfo, indices: Sequence[int]) -> list[Any]:
    """What `predict_paths` reads for each record: its file, or a lazy read of its record."""
    images = info.images
    if images is None:
        return [info.records[i].image_path for i in indices]
    resize = getattr(images, "index", {}).get("resize")
    if resize:
        raise ValueError(
            f"{info.source}: this shard set was packed with --resize {resize} (a training set); "
            "evaluation needs the original pixels: pack the validation split without --resize"
        )
    return [functools.partial(images.read, int(i)) for i in indices]


def evaluate_dataset(
    predictor: Predictor,
    info: DatasetInfo,
    *,
    batch_size: int = 8,
    progress: bool = True,
    split_timing: bool = False,
    use_07_metric: bool = True,
    coco_gt: Any = None,
    process_index: int | None = None,
    process_count: int | None = None,
    gather_fn: Callable[[Any], Any] | None = None,
) -> EvalResult:
    """Predict every record of `info` and score the detections (COCOeval for COCO, the official
    VOC mAP for VOC). stats: the metric numbers, `num_images`, timing (see the module docstring).

    Images come from the records' files, or from `info.images` (a packed shard set). With
    several processes each predicts its slice with its local devices, process 0 scores and
    every process returns process 0's stats; detections: all of them, on every process.
    coco_gt: a pycocotools COCO to reuse (default: loaded from `info.source`, on process 0
    only); use_07_metric: VOC only. COCO is scored on the records' images only.
    """
    from yolox_jax.eval.coco_eval import evaluate_coco, scoring_inputs
    from yolox_jax.eval.voc_eval import evaluate_voc

    if predictor.num_classes != len(info.class_names):
        raise ValueError(
            f"the predictor scores {predictor.num_classes} classes but {info.source} has "
            f"{len(info.class_names)} ({', '.join(info.class_names[:5])}...); build the "
            f"Predictor with num_classes={len(info.class_names)} (a model with at least that "
            "many outputs)"
        )
    if info.format not in ("coco", "voc"):
        raise ValueError(f"unknown dataset format {info.format!r}; expected 'coco' or 'voc'")
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    indices = np.arange(pi, len(info.records), pc)
    items = _image_items(info, indices)
    dets, timing = predict_paths(predictor, items, batch_size, progress and pi == 0,
                                 split_timing, desc=f"eval {info.format}")
    if pc > 1:
        packed = gather_detections(pack_detections(dets, indices), gather_fn)
        dets = unpack_detections(packed, len(info.records), predictor.input_size)
        keys = sorted(timing)
        gather = gather_fn
        if gather is None:
            from jax.experimental.multihost_utils import process_allgather as gather
        allt = np.asarray(gather(np.array([timing[k] for k in keys], np.float32)), np.float64)
        allt = allt.reshape(pc, len(keys))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns stay nan
            means = dict(zip(keys, np.nanmean(allt, axis=0).tolist(), strict=True))
        timing = dict(zip(keys, np.nansum(allt, axis=0).tolist(), strict=True))
        timing.update({k: means[k] for k in ("inference_ms", "forward_ms", "nms_ms")})
    stats: dict[str, Any] = {}
    if pi == 0:
        if info.format == "coco":
            gt, results, image_ids = scoring_inputs(info, dets, coco_gt)
            stats = evaluate_coco(gt, results, info.class_names, image_ids=image_ids)
        else:
            stats = evaluate_voc(dets, info.records, info.class_names, use_07_metric)
    if pc > 1:
        stats = share_from_process0(stats, pi, gather_fn)
    stats["num_images"] = len(info.records)
    stats.update({k: v for k, v in timing.items() if k in (
        "inference_ms", "forward_ms", "nms_ms", "images_per_s", "compiled_batches")
        and not np.isnan(v)})
    return EvalResult(stats=stats, detections=dets)


class Evaluator:
    """The trainer's evaluation: `config.data`'s val split (`datasets.read_split(config, "val")`;
    a YOLO dataset scored as COCO through `coco_eval.for_scoring`), `config.test` thresholds,
    `data.test_size` / `data.legacy`.

    Built once per run: it keeps the dataset, the ground truth (COCO: process 0 only, which
    scores) and, from the first `evaluate`, the compiled predictor; `evaluate(variables)` swaps
    the weights in (the trainer calls it every `eval_interval` epochs; nothing recompiles).
    """

    def __init__(self, model: Any, config: Any, *, batch_size: int = 8, progress: bool = True,
                 split_timing: bool = False):
        from yolox_jax.data.datasets import read_split
        from yolox_jax.eval.coco_eval import for_scoring, load_coco_gt

        self.model, self.config = model, config
        self.batch_size, self.progress, self.split_timing = int(batch_size), progress, split_timing
        self.info, self.coco_gt = for_scoring(read_split(config, "val"))
        if self.coco_gt is None and self.info.format == "coco" and jax.process_index() == 0:
            self.coco_gt = load_coco_gt(self.info.source)
        self.predictor: Predictor | None = None

    def _predictor(self, variables: Any) -> Predictor:
        t, model = self.config.test, self.model
        n_data, n_model = len(self.info.class_names), int(model.num_classes)
        return Predictor(  # input size and legacy flag: the config's (data.test_size / legacy)
            model, variables, config=self.config, conf=float(t.conf), nms=float(t.nms),
            class_agnostic=bool(t.class_agnostic), pre_nms_topk=t.pre_nms_topk,
            max_det=t.max_det, dtype=model.dtype, batch_buckets=(self.batch_size,),
            num_classes=n_data if n_data != n_model else None,
        )

    def evaluate(self, variables: Any) -> dict[str, Any]:
        """The stats of `variables` (host or device arrays; no detections)."""
        if self.predictor is None:
            self.predictor = self._predictor(variables)
        else:
            self.predictor.set_variables(variables)
        result = evaluate_dataset(self.predictor, self.info, batch_size=self.batch_size,
                                  progress=self.progress, split_timing=self.split_timing,
                                  coco_gt=self.coco_gt)
        return result.stats


def evaluate_config_dataset(
    model: Any,
    variables: Any,
    config: Any,
    *,
    batch_size: int = 8,
    progress: bool = True,
    split_timing: bool = False,
) -> dict[str, Any]:
    """One evaluation of `variables` on `config.data`'s val split (see `Evaluator`, which a
    loop evaluating several times holds instead: this reads and compiles every call)."""
    return Evaluator(model, config, batch_size=batch_size, progress=progress,
                     split_timing=split_timing).evaluate(variables)
