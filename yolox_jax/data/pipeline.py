"""The training data stream: deterministic, resumable, multi-worker (grain) and multi-host.

Every training sample is a pure function of (seed, epoch, position in the epoch):

* Epoch e visits the records in the order `epoch_permutation(seed, e, N)` (PCG64 seeded by
  (seed, e)). Global batch b of epoch e holds positions [b * G, (b + 1) * G); position q is
  record perm[q mod N] (a position past N wraps to the start of the same permutation, see below).
* The sample at position q of epoch e (record r = perm[q mod N], pass k = q // N) is augmented with
  `np.random.Generator(PCG64(SeedSequence([seed, e, SAMPLE_STREAM, r, k])))`, so it depends on
  neither the number of worker processes, nor the prefetching, nor the order work is done in.
* Mosaic, random affine and mixup are on iff e < max_epoch - no_aug_epochs (decided by the
  sample's epoch, so a resumed run sees the same samples); `mosaic_prob` < 1 mixes mosaic and
  plain samples in one batch (labels are always padded to [max_labels, 5]). The official
  trainer switches in `before_epoch` when (0-based) epoch + 1 == max_epoch - no_aug_epochs, i.e.
  one epoch earlier (no_aug_epochs + 1 plain epochs), and its prefetching workers still deliver
  a few mosaic batches after the switch; the rule here is the documented "last no_aug_epochs
  epochs", the epochs in which the trainer adds the L1 loss.
* Process p of P takes rows [p * G / P, (p + 1) * G / P) of each global batch, so the global
  batch does not depend on the process count; each process computes only its rows.

Epoch length: the official trainer draws batches from an `InfiniteSampler` (an endless stream of
permutations, `drop_last=False`) and counts ceil(N / G) iterations per epoch (`len(train_loader)`),
so its batches straddle permutation boundaries. Here an epoch is exactly one permutation and has
the same ceil(N / G) iterations: the last global batch, when N is not a multiple of G, is filled
up with the first positions of the same permutation (a second pass, with its own random draws),
so every batch is full (one compiled shape) and the iteration count and learning-rate schedule
match the official. Nothing is dropped.

Bad data never stops an epoch: a record whose image cannot be decoded (missing, corrupt; from
a shard set also a record that does not parse or disagrees with the index) is replaced,
wherever it is loaded (as the sample itself, a mosaic tile or a mixup partner), by the next
readable record (r + 1, r + 2, ... mod N), deterministically, and counted; more than
`max_labels` boxes keep the largest ones, counted. `Batch.stats` and `TrainLoader.summary(epoch)`
report these per batch / per epoch (for this process's rows); the summary is logged at the end
of every epoch.

Worker processes (grain `mp_prefetch`, `num_workers` > 0) each compute whole batches (decode,
augment, stack) of their slice of the stream; `num_workers=0` computes them in this process.
Grain's workers read absl flags: the loader marks them parsed if no `absl.app` did. Scripts that
start workers must guard their entry point with `if __name__ == "__main__":` (spawn).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from yolox_jax.data.augment import augment_record
from yolox_jax.data.cache import ImageStore, UnreadableImageError
from yolox_jax.data.transforms import letterbox_ratio

log = logging.getLogger(__name__)

STATE_VERSION = 1
# Distinct SeedSequence streams for the epoch order and for the per-sample augmentation draws.
PERMUTATION_STREAM = 0
SAMPLE_STREAM = 1
# Per-sample statistics vector (int64), stacked into [b_local, NUM_STATS] by the batcher.
STAT_FIELDS = (
    "mosaic", "mixup", "num_labels", "capped", "boxes_dropped", "small_dropped",
    "unreadable_loads", "cache_repaired", "size_mismatch", "record", "epoch", "position",
)
MAX_REPORTED_UNREADABLE = 4  # unreadable record ids carried per sample (more are only counted)
NUM_STATS = len(STAT_FIELDS) + MAX_REPORTED_UNREADABLE
_COL = {name: i for i, name in enumerate(STAT_FIELDS)}
# Config fields the samples read (copied into a plain dict so that workers need no ConfigDict).
_CFG_KEYS = (
    "mosaic_prob", "mixup_prob", "hsv_prob", "flip_prob", "degrees", "translate", "mosaic_scale",
    "enable_mixup", "mixup_scale", "shear", "max_labels", "input_size",
)


def epoch_permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
    """The record order of `epoch`: a permutation [N] of range(N) from (seed, epoch)."""
    ss = np.random.SeedSequence([seed, epoch, PERMUTATION_STREAM])
    return np.random.Generator(np.random.PCG64(ss)).permutation(num_records)


def sample_rng(seed: int, epoch: int, record: int, repeat: int = 0) -> np.random.Generator:
    """The generator of all random draws of one sample (record `record`, pass `repeat`)."""
    ss = np.random.SeedSequence([seed, epoch, SAMPLE_STREAM, record, repeat])
    return np.random.Generator(np.random.PCG64(ss))


@dataclasses.dataclass(frozen=True)
class Batch:
    """This process's rows of one global batch.

    images [b_local, H, W, 3] uint8 BGR (the model casts; 4x less host->device traffic than
    float32), labels [b_local, max_labels, 5] float32 (class, cx, cy, w, h) in input pixels,
    zero rows pad; stats: counts over these rows (see `TrainLoader.summary`).
    """

    images: np.ndarray
    labels: np.ndarray
    epoch: int
    batch_index: int
    stats: dict[str, Any]


_MISSING = object()


def _field(record: Any, name: str, default: Any = _MISSING) -> Any:
    """`record[name]` or `record.name` (dict or dataclass records), else `default`."""
    value = record.get(name, default) if isinstance(record, Mapping) else getattr(
        record, name, default
    )
    if value is _MISSING:
        raise KeyError(f"training record {record!r:.120} has no field {name!r}")
    return value


def _records_arrays(
    records: Sequence[Any],
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[tuple[int, int]], dict[str, int]]:
    """Records -> (image paths, boxes [K, 4] float64 xyxy, classes [K] int64, (h, w) (0, 0 when
    unknown), report), boxes flagged `ignore` and non-finite boxes left out.

    Boxes flagged `ignore` (COCO iscrowd) are not training targets, as the official COCO loader
    (`getAnnIds(iscrowd=False)`) has it. The report counts: images, boxes (kept), ignored,
    non_finite (dropped: they would make the loss NaN), empty_images (no box left: trained on as
    background, as the official), outside_image (boxes reaching outside the annotated image size;
    kept as the official does: mosaic / affine clip them, the plain path leaves them), inverted
    (x2 < x1 or y2 < y1; they end up below 1 px and are dropped by the transform).
    """
    paths, boxes, classes, sizes = [], [], [], []
    report = dict.fromkeys(
        ("images", "boxes", "ignored", "non_finite", "empty_images", "outside_image",
         "inverted"), 0,
    )
    for i, rec in enumerate(records):
        path = os.fspath(_field(rec, "image_path"))
        try:
            b = np.asarray(_field(rec, "boxes"), dtype=np.float64).reshape(-1, 4)
            c = np.asarray(_field(rec, "classes"), dtype=np.int64).reshape(-1)
            ign = _field(rec, "ignore", None)
            ign = np.zeros(len(b), bool) if ign is None else np.asarray(ign, bool).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"record {i} ({path}): boxes must be [K, 4] numbers and classes [K] "
                             f"integers ({e})") from e
        if not (len(b) == len(c) == len(ign)):
            raise ValueError(
                f"record {i} ({path}): {len(b)} boxes, {len(c)} classes and {len(ign)} ignore "
                "flags; expected the same number"
            )
        finite = np.isfinite(b).all(1)
        keep = ~ign & finite
        report["ignored"] += int(ign.sum())
        report["non_finite"] += int((~finite & ~ign).sum())
        b, c = np.ascontiguousarray(b[keep]), np.ascontiguousarray(c[keep])
        h, w = int(_field(rec, "height", 0) or 0), int(_field(rec, "width", 0) or 0)
        if h > 0 and w > 0 and len(b):
            report["outside_image"] += int(
                ((b[:, :2] < 0).any(1) | (b[:, 2] > w) | (b[:, 3] > h)).sum()
            )
        report["inverted"] += int(((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).sum())
        report["images"] += 1
        report["boxes"] += len(b)
        report["empty_images"] += int(len(b) == 0)
        paths.append(path)
        boxes.append(b)
        classes.append(c)
        sizes.append((h, w))
    return paths, boxes, classes, sizes, report


def _fingerprint(paths: Sequence[str], boxes: Sequence[np.ndarray]) -> str:
    """Identifies the record list (file names and box counts; independent of the data root)."""
    h = hashlib.sha1()
    for p, b in zip(paths, boxes, strict=True):
        h.update(f"{os.path.basename(p)}:{len(b)};".encode())
    return h.hexdigest()[:16]


class _SampleFn:
    """Stream index -> one sample dict (image, labels, stats); runs in the grain workers.

    Picklable and deterministic: its only state is a per-epoch permutation memo and the set of
    records found unreadable (both pure functions of the inputs).
    """

    def __init__(
        self,
        store: ImageStore,
        boxes: list[np.ndarray],
        classes: list[np.ndarray],
        cfg: dict[str, Any],
        seed: int,
        aug_epochs: int,
        global_batch: int,
        local_batch: int,
        process_index: int,
        iters_per_epoch: int,
        start_flat_batch: int,
    ) -> None:
        self.store = store
        self.boxes = boxes
        self.classes = classes
        self.cfg = cfg
        self.seed = seed
        self.aug_epochs = aug_epochs
        self.global_batch = global_batch
        self.local_batch = local_batch
        self.process_index = process_index
        self.iters = iters_per_epoch
        self.start = start_flat_batch
        self.n = len(boxes)
        self._perm: tuple[int, np.ndarray] | None = None
        self._bad: set[int] = set()

    def locate(self, i: int) -> tuple[int, int, int]:
        """Stream index -> (epoch, batch index, position in the epoch)."""
        flat, row = divmod(i, self.local_batch)
        epoch, batch = divmod(self.start + flat, self.iters)
        pos = batch * self.global_batch + self.process_index * self.local_batch + row
        return epoch, batch, pos

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, self.n))
        return self._perm[1]

    def _load(self, index: int, events: dict[str, Any]) -> tuple[np.ndarray, Any, Any]:
        """Record -> (image resized to fit, boxes scaled with it, classes); bad ones replaced."""
        h_in, w_in = self.cfg["input_size"]
        for k in range(self.n):
            r = (index + k) % self.n
            if r in self._bad:
                events["unreadable"].append(r)
                continue
            try:
                img, src_hw, repaired = self.store.load(r)
            except UnreadableImageError as e:
                if r not in self._bad:
                    log.warning("record %d: %s; replaced by the next readable record", r, e)
                self._bad.add(r)
                events["unreadable"].append(r)
                continue
            events["cache_repaired"] += int(repaired)
            # As the official pull_item: boxes scaled by the image's own resize ratio.
            scale = letterbox_ratio(src_hw, (h_in, w_in))
            expected = self.store.expected_hw(r)
            events["size_mismatch"] += int(expected is not None and src_hw != expected)
            return img, self.boxes[r] * scale, self.classes[r]
        raise UnreadableImageError(
            f"none of the {self.n} training images can be read (first: {self.store.paths[0]!r})"
        )

    def _has_boxes(self, index: int) -> bool:
        # Pure (never the worker-local `_bad` memo), so the partner drawn for mixup does not
        # depend on which worker made the sample.
        return len(self.boxes[index]) > 0

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        epoch, _, pos = self.locate(int(i))
        repeat, q = divmod(pos, self.n)
        record = int(self._permutation(epoch)[q])
        rng = sample_rng(self.seed, epoch, record, repeat)
        events: dict[str, Any] = {"unreadable": [], "cache_repaired": 0, "size_mismatch": 0}
        img, labels, info = augment_record(
            record,
            lambda j: self._load(j, events),
            self.n,
            rng,
            self.cfg,
            input_size=self.cfg["input_size"],
            enable_mosaic=epoch < self.aug_epochs,
            has_boxes=self._has_boxes,
        )
        max_labels = int(self.cfg["max_labels"])
        n_labels = int(info["num_labels"])
        stats = np.full(NUM_STATS, -1, dtype=np.int64)
        stats[: len(STAT_FIELDS)] = (
            int(info["mosaic"]), int(info["mixup"]), n_labels, int(n_labels > max_labels),
            max(0, n_labels - max_labels), int(info["small_dropped"]),
            len(events["unreadable"]), events["cache_repaired"],
            events["size_mismatch"], record, epoch, pos,
        )
        bad = events["unreadable"][:MAX_REPORTED_UNREADABLE]
        stats[len(STAT_FIELDS) : len(STAT_FIELDS) + len(bad)] = bad
        return {"image": img, "labels": labels, "stats": stats}


def _worker_init(cv2_threads: int, worker_index: int, worker_count: int) -> None:
    """In each grain worker: bound OpenCV's own thread pool (workers already share the cores)."""
    del worker_index, worker_count
    import cv2

    cv2.setNumThreads(cv2_threads)


def _batch_stats(stats: np.ndarray) -> dict[str, Any]:
    """[b, NUM_STATS] -> counts over the rows."""
    out: dict[str, Any] = {"samples": int(len(stats))}
    for name in ("mosaic", "mixup", "num_labels", "capped", "boxes_dropped", "small_dropped",
                 "unreadable_loads", "cache_repaired", "size_mismatch"):
        out[name] = int(stats[:, _COL[name]].sum())
    ids = stats[:, len(STAT_FIELDS):]
    out["unreadable_records"] = sorted({int(v) for v in ids[ids >= 0].tolist()})
    return out


def _merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if k == "unreadable_records":
            total[k] = sorted(set(total.get(k, [])) | set(v))
        else:
            total[k] = total.get(k, 0) + v


class TrainLoader:
    """Epochs of augmented training batches for this process (see the module docstring).

    `records`: the readers' records (fields image_path, width, height, boxes [K, 4] xyxy,
    classes [K], ignore [K]). `data_cfg` is `config.data`. `global_batch_size` (G) must be a
    multiple of `process_count`. `images`: where the pixels are when not in the `image_path`
    files (a DatasetInfo's `images`, e.g. the records of a packed shard set: the same samples,
    bit for bit, as the files they were packed from).
    """

    def __init__(
        self,
        records: Sequence[Any],
        data_cfg: Any,
        global_batch_size: int,
        seed: int,
        no_aug_epochs: int,
        max_epoch: int,
        num_workers: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        input_size: Sequence[int] | None = None,
        cv2_threads: int | None = None,
        read_threads: int = 1,
        images: Any = None,
    ) -> None:
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not records:
            raise ValueError("TrainLoader needs at least one training record, got none")
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(
                f"global batch size {global_batch_size} must be positive and divisible by the "
                f"process count {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.cfg = {k: data_cfg[k] for k in _CFG_KEYS}
        size = tuple(int(s) for s in (input_size or self.cfg["input_size"]))
        self.cfg["input_size"] = size
        self.cfg["mosaic_scale"] = tuple(self.cfg["mosaic_scale"])
        self.cfg["mixup_scale"] = tuple(self.cfg["mixup_scale"])
        self.input_size = size
        self.max_labels = int(self.cfg["max_labels"])
        self.seed = int(seed)
        self.max_epoch = int(max_epoch)
        self.no_aug_epochs = int(no_aug_epochs)
        self.aug_epochs = self.max_epoch - self.no_aug_epochs
        self.global_batch_size = int(global_batch_size)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.local_batch_size = self.global_batch_size // self.process_count
        self.num_workers = int(data_cfg["num_workers"] if num_workers is None else num_workers)
        cpus = os.cpu_count() or 1
        self.cv2_threads = (
            int(cv2_threads) if cv2_threads is not None
            else max(1, cpus // max(1, self.num_workers))
        )
        self.read_threads = int(read_threads)

        paths, self._boxes, self._classes, sizes, self.records_report = _records_arrays(records)
        r = self.records_report
        log.log(
            logging.WARNING if r["non_finite"] else logging.INFO,
            "training records: %d images, %d boxes (%d ignored, %d non-finite dropped), %d "
            "images without boxes, %d boxes reaching outside their image, %d inverted",
            r["images"], r["boxes"], r["ignored"], r["non_finite"], r["empty_images"],
            r["outside_image"], r["inverted"],
        )
        self.num_records = len(paths)
        self.iters_per_epoch = math.ceil(self.num_records / self.global_batch_size)
        self.fingerprint = _fingerprint(paths, self._boxes)
        cache_mode = str(data_cfg.get("cache", "") or "")
        cache_dir = str(data_cfg.get("cache_dir", "") or "")
        if images is not None and len(images) != len(paths):
            raise ValueError(f"{len(images)} images for {len(paths)} training records")
        self.store = ImageStore(None if images is not None else paths, size, cache_mode,
                                cache_dir, source_hw=sizes, images=images)
        self._summaries: dict[int, dict[str, Any]] = {}
        self._iter: Any = None
        self._next_flat: int | None = None

    # -- stream ---------------------------------------------------------------------------------

    def _open(self, flat: int) -> None:
        self.close()
        end_epoch = max(self.max_epoch, flat // self.iters_per_epoch + 1)
        num_batches = end_epoch * self.iters_per_epoch - flat
        fn = _SampleFn(
            self.store, self._boxes, self._classes, self.cfg, self.seed, self.aug_epochs,
            self.global_batch_size, self.local_batch_size, self.process_index,
            self.iters_per_epoch, flat,
        )
        ds = (
            grain.MapDataset.range(num_batches * self.local_batch_size)
            .map(fn)
            .batch(self.local_batch_size)
        )
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=2)
        )
        if self.num_workers > 0:
            import functools

            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read an absl flag
                flags.FLAGS.mark_as_parsed()

            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.num_workers,
                                             per_worker_buffer_size=2),
                worker_init_fn=functools.partial(_worker_init, self.cv2_threads),
            )
        self._iter = iter(it_ds)
        self._next_flat = flat

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Batches start_batch .. iters_per_epoch - 1 of `epoch` (this process's rows).

        Consecutive calls continue one stream (workers keep running across epochs); any other
        (epoch, start_batch) restarts it there, with bit-identical results.
        """
        if epoch < 0 or not 0 <= start_batch <= self.iters_per_epoch:
            raise ValueError(
                f"epoch {epoch} / start_batch {start_batch} out of range (iters_per_epoch "
                f"{self.iters_per_epoch})"
            )
        return self._epoch(int(epoch), int(start_batch))

    def _epoch(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        flat = epoch * self.iters_per_epoch + start_batch
        if start_batch == 0:
            self._summaries[epoch] = {}
        summary = self._summaries.setdefault(epoch, {})
        for b in range(start_batch, self.iters_per_epoch):
            if self._iter is None or self._next_flat != flat:
                self._open(flat)
            item = next(self._iter)
            self._next_flat = flat = flat + 1
            # Plain arrays: workers hand over shared-memory views, freed here at once.
            images, labels, stats = (np.array(item[k]) for k in ("image", "labels", "stats"))
            del item
            if not (np.all(stats[:, _COL["epoch"]] == epoch)
                    and int(stats[0, _COL["position"]]) == b * self.global_batch_size
                    + self.process_index * self.local_batch_size):
                raise RuntimeError(f"data stream out of order at epoch {epoch} batch {b}")
            bstats = _batch_stats(stats)
            _merge(summary, bstats)
            yield Batch(images, labels, epoch, b, bstats)
        self._log_summary(epoch, summary)

    def _log_summary(self, epoch: int, s: dict[str, Any]) -> None:
        msg = (
            f"data epoch {epoch + 1}: {s.get('samples', 0)} samples (process "
            f"{self.process_index}), {s.get('mosaic', 0)} mosaic, {s.get('mixup', 0)} mixup, "
            f"{s.get('capped', 0)} capped at {self.max_labels} labels "
            f"({s.get('boxes_dropped', 0)} boxes dropped), {s.get('small_dropped', 0)} boxes "
            f"under 1 px dropped, {s.get('unreadable_loads', 0)} "
            f"loads of unreadable images replaced (records {s.get('unreadable_records', [])}), "
            f"{s.get('cache_repaired', 0)} corrupt cache entries repaired, "
            f"{s.get('size_mismatch', 0)} images whose size differs from the annotation"
        )
        bad = s.get("capped", 0) or s.get("unreadable_loads", 0) or s.get("cache_repaired", 0)
        log.log(logging.WARNING if bad else logging.INFO, msg)

    def summary(self, epoch: int) -> dict[str, Any]:
        """Counts over this process's samples of `epoch` seen so far: samples, mosaic, mixup,
        num_labels, capped (samples over max_labels), boxes_dropped (by the cap), small_dropped
        (min side <= 1 px after the augmentation, as official), unreadable_loads (image loads
        replaced by another record), unreadable_records (ids), cache_repaired, size_mismatch."""
        return dict(self._summaries.get(epoch, {}))

    # -- checkpointing --------------------------------------------------------------------------

    def state(self, epoch: int, next_batch: int) -> dict[str, Any]:
        """JSON-serialisable position of the stream: the next batch to train on."""
        return {
            "version": STATE_VERSION, "epoch": int(epoch), "next_batch": int(next_batch),
            "seed": self.seed, "global_batch_size": self.global_batch_size,
            "num_records": self.num_records, "iters_per_epoch": self.iters_per_epoch,
            "fingerprint": self.fingerprint,
        }

    def restore(self, state: Mapping[str, Any]) -> tuple[int, int]:
        """Checkpointed `state(...)` -> (epoch, next_batch) to pass to `epoch()`.

        The seed, global batch size and record count must match (else the position would mean
        other samples); a different record list with the same count only warns.
        """
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')!r}, expected "
                             f"{STATE_VERSION}")
        for key in ("seed", "global_batch_size", "num_records"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data stream: checkpoint has {key}={state[key]}, this run "
                    f"{getattr(self, key)}; the same samples cannot be reproduced"
                )
        if state.get("fingerprint") != self.fingerprint:
            log.warning("the training records differ from the checkpoint's (same count); "
                        "resumed batches will not match the original run")
        epoch, next_batch = int(state["epoch"]), int(state["next_batch"])
        if next_batch >= self.iters_per_epoch:
            epoch, next_batch = epoch + 1, 0
        return epoch, next_batch

    def close(self) -> None:
        """Stop the worker processes (also done at garbage collection)."""
        it, self._iter, self._next_flat = self._iter, None, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        self.store.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
