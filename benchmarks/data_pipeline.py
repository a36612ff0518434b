"""Training-data throughput: samples/s of the full YOLOX augmentation on real COCO images,
read from the image folder or from packed ArrayRecord shards, beside the official loader.

    PYTHONPATH=$PWD /work/benchenv/bin/python benchmarks/data_pipeline.py \
        [--data-dir ../shared/data/coco_subset] [--source folder shards] [--shards DIR] \
        [--size 640] [--workers 0 2] [--samples 240] [--official /tmp/yolox_official] \
        [--cache ""|ram] [--target-rate 1000]

Runs `TrainLoader` (decode + mosaic + random affine + mixup + HSV + flip + letterbox + label
padding, yolox_base defaults: mosaic_prob 1.0, mixup_prob 1.0) with and without mixup, for each
source and worker count, and reports samples/s overall, per process (0 workers: the main process
does everything) and per worker process. `--source shards` reads a shard set (`--shards DIR`, or
the data dir packed into a temporary folder first; the pack time and size are printed).
`--official PATH` runs the official `MosaicDetection` + `TrainTransform` over `COCODataset` (the
YOLOX checkout at PATH; it needs torch) on the same images in the same run, one process, and
prints our/official ratios. The first batch (worker start-up) is not timed. The machine's load
average is printed: shared cores make numbers noisy.

Feeding an accelerator: `--target-rate R` (samples/s one accelerator consumes) prints how many
workers at the measured per-worker rate one accelerator needs. The default R = 1000 is an
assumption, not a measurement: yolox_s is 26.8 GFLOPs per 640 image forward (official YOLOX
README), ~80 GFLOPs per trained image (forward + backward ~ 3x); 1000 images/s is 80 TFLOP/s,
~8% of an H100 SXM's 989 dense bf16 TFLOP/s, a utilisation small conv nets reach.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from typing import Any

import numpy as np

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "coco_subset")


def read_records(data_dir: str, ann: str, images: str) -> list[Any]:
    """COCO records through the project's reader (official COCODataset semantics)."""
    from yolox_jax.data import readers

    return readers.read_coco(data_dir, ann, images).records


def pack_shards(data_dir: str, ann: str, images: str, out: str) -> tuple[float, int]:
    """Pack the COCO data into a shard set at `out` -> (seconds, bytes of the set)."""
    from yolox_jax.data import pack, readers

    t0 = time.perf_counter()
    info = readers.read_coco(data_dir, ann, images)
    pack.pack_dataset(info, out, name="bench", progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    return seconds, sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))


def bench_ours(records: list[Any], data_cfg: Any, workers: int, samples: int, batch: int,
               read_threads: int, images: Any = None) -> tuple[float, int]:
    """-> (seconds, samples) for `samples` training samples after one untimed batch."""
    from yolox_jax.data.pipeline import TrainLoader

    batches = max(1, -(-samples // batch))
    with TrainLoader(records, data_cfg, batch, seed=0, no_aug_epochs=0, max_epoch=10**4,
                     num_workers=workers, process_index=0, process_count=1,
                     read_threads=read_threads, images=images) as loader:
        done, epoch, t0 = -1, 0, 0.0
        while done < batches:
            for _ in loader.epoch(epoch):
                if done < 0:
                    t0 = time.perf_counter()
                done += 1
                if done == batches:
                    break
            epoch += 1
        seconds = time.perf_counter() - t0
    return seconds, batches * batch


def bench_official(path: str, data_dir: str, ann: str, images: str, data_cfg: Any,
                   samples: int) -> tuple[float, int]:
    """The official MosaicDetection + TrainTransform, one process, `samples` __getitem__ calls."""
    try:
        import torch  # noqa: F401 - the official package imports it
    except ImportError:
        raise SystemExit(
            "--official needs torch (the official YOLOX data code imports it), and torch is not "
            "installed in this environment; run without --official, or in an environment with "
            "torch, pycocotools and opencv"
        ) from None
    if not os.path.isdir(os.path.join(path, "yolox")):
        raise SystemExit(f"--official {path!r}: expected a YOLOX checkout (with a yolox/ folder)")
    sys.path.insert(0, os.path.abspath(path))
    try:
        import torchvision  # noqa: F401
    except ImportError:  # imported by yolox.utils for NMS only, which the data code never calls
        import types

        tv = types.ModuleType("torchvision")
        tv.ops = types.ModuleType("torchvision.ops")
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, tv.ops
    from yolox.data import COCODataset, MosaicDetection, TrainTransform

    size = tuple(int(s) for s in data_cfg.input_size)
    dataset = COCODataset(data_dir=data_dir, json_file=ann, name=images, img_size=size,
                          preproc=None, cache=False)
    dataset = MosaicDetection(
        dataset, img_size=size, mosaic=True,
        preproc=TrainTransform(max_labels=int(data_cfg.max_labels),
                               flip_prob=float(data_cfg.flip_prob),
                               hsv_prob=float(data_cfg.hsv_prob)),
        degrees=float(data_cfg.degrees), translate=float(data_cfg.translate),
        mosaic_scale=tuple(data_cfg.mosaic_scale), mixup_scale=tuple(data_cfg.mixup_scale),
        shear=float(data_cfg.shear), enable_mixup=bool(data_cfg.enable_mixup),
        mosaic_prob=float(data_cfg.mosaic_prob), mixup_prob=float(data_cfg.mixup_prob),
    )
    random.seed(0)
    np.random.seed(0)
    order = np.random.default_rng(0).permutation(len(dataset))
    dataset[int(order[0])]  # warm-up, as our first batch
    t0 = time.perf_counter()
    for i in range(samples):
        dataset[int(order[(i + 1) % len(order)])]
    return time.perf_counter() - t0, samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--ann", default="instances_val2017_subset.json")
    p.add_argument("--images", default="val2017")
    p.add_argument("--source", nargs="+", default=["folder", "shards"],
                   choices=["folder", "shards"])
    p.add_argument("--shards", default="",
                   help="a packed shard set of the same data (default: pack it to a temp dir)")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--samples", type=int, default=240)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--read-threads", type=int, default=1,
                   help="grain read threads per process (1: one sample at a time, as official)")
    p.add_argument("--cache", default="", choices=["", "ram", "disk"],
                   help='image cache ("": decode every time, the official default)')
    p.add_argument("--modes", nargs="+", default=["mixup", "no-mixup"],
                   choices=["mixup", "no-mixup"])
    p.add_argument("--official", default="", help="path of an official YOLOX checkout")
    p.add_argument("--target-rate", type=float, default=1000.0,
                   help="samples/s one accelerator consumes (an assumption: see the docstring)")
    args = p.parse_args(argv)

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    import cv2

    from yolox_jax.config import base_config

    data_dir = os.path.abspath(args.data_dir)
    if not os.path.isdir(data_dir):
        raise SystemExit(f"--data-dir {data_dir!r} does not exist (expected a COCO layout with "
                         f"annotations/{args.ann} and {args.images}/)")
    records = read_records(data_dir, args.ann, args.images)
    print(f"{len(records)} images from {data_dir}; input {args.size}; cv2 threads "
          f"{cv2.getNumThreads()}; {os.cpu_count()} cpus; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    sources: dict[str, tuple[list[Any], Any]] = {}
    tmp = None
    if "folder" in args.source:
        sources["folder"] = (records, None)
    if "shards" in args.source:
        from yolox_jax.data.shards import open_shards

        location = args.shards
        if not location:
            import tempfile

            tmp = tempfile.mkdtemp(prefix="yolox_jax_bench_shards_")
            location = os.path.join(tmp, "set")
            sec, nbytes = pack_shards(data_dir, args.ann, args.images, location)
            image_bytes = sum(os.path.getsize(r.image_path) for r in records)
            print(f"packed {len(records)} images ({image_bytes / 2**20:.1f} MiB of files) into "
                  f"{location}: {nbytes / 2**20:.1f} MiB, {sec:.1f} s")
        info = open_shards(location)
        sources["shards"] = (info.records, info.images)
    rows = []
    per_worker: list[float] = []
    for mode in args.modes:
        cfg = base_config().data
        cfg.input_size = (args.size, args.size)
        cfg.enable_mixup = mode == "mixup"
        cfg.cache = args.cache
        official = None
        if args.official:
            sec, n = bench_official(args.official, data_dir, args.ann, args.images, cfg,
                                    args.samples)
            official = n / sec
            rows.append(("official", "folder", mode, "1 process", n, sec, official, official,
                         ""))
        for source, (recs, images) in sources.items():
            for workers in args.workers:
                sec, n = bench_ours(recs, cfg, workers, args.samples, args.batch,
                                    args.read_threads, images)
                rate = n / sec
                per = rate / max(1, workers)
                if mode == "mixup" and source == "shards" and workers > 0:
                    per_worker.append(per)
                ratio = f"{per / official:.2f}x" if official else ""
                where = "main process" if workers == 0 else f"{workers} workers"
                rows.append(("yolox_jax", source, mode, where, n, sec, rate, per, ratio))
                print(f"  {source:6s} {mode:8s} {where:12s} {rate:6.1f} samples/s", flush=True)
    head = ("impl", "source", "mode", "processes", "samples", "seconds", "samples/s",
            "per process / worker", "per process / official")
    print("\n| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for impl, source, mode, where, n, sec, rate, per, ratio in rows:
        print(f"| {impl} | {source} | {mode} | {where} | {n} | {sec:.1f} | {rate:.1f} | "
              f"{per:.1f} | {ratio} |")
    if per_worker:
        per = max(per_worker)
        print(f"\nfeeding one accelerator at {args.target_rate:.0f} samples/s (assumed, see the "
              f"docstring) with mosaic + mixup at {args.size} from shards: "
              f"{math.ceil(args.target_rate / per)} workers (cores) at the {per:.1f} "
              "samples/s per worker measured here")
    print(f"\nload average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
