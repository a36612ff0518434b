"""Pack a dataset (any reader's DatasetInfo) into ArrayRecord shards (format: `data/shards.py`).

    python -m yolox_jax.data.pack coco /data/coco --ann instances_train2017.json --out gs://b/coco/train
    python -m yolox_jax.data.pack voc VOCdevkit/VOC2007 --split trainval --out /data/voc07_trainval
    python -m yolox_jax.data.pack verify gs://b/coco/train

One record per image, in the reader's order: the image file's bytes as stored (no re-encode, so
a decoded record is bit-identical to `cv2.imread` of the file), its boxes / classes / ignore /
difficult flags, image id, size and file name. `--resize H [W]` pre-resizes images larger than
(H, W) (the longest training size) to fit it, re-encoding them (JPEG quality `--jpeg-quality`,
PNG stays PNG) and scaling their boxes: fewer bytes to move and decode, and the documented
exception to bit-identical pixels; smaller images are stored as they are. Such a set is for
training only (evaluation needs the original pixels).

Every image is decoded once while packing (`--no-check-images` skips it): undecodable images and
images whose size differs from the annotation are counted and reported, and stored as they are,
so that the records stay those of the folder layout (training replaces undecodable ones the
same way for both). The reader's warnings are kept in the index and reported when it is opened.
An output URL (`gs://...`) is written to a local temporary folder first and then uploaded;
`index.json` is written last, so a set without it is an unfinished one.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from yolox_jax.data import paths, shards
from yolox_jax.data.io import UnreadableImageError, decode_image
from yolox_jax.data.readers import DatasetError, DatasetInfo, ImageRecord

log = logging.getLogger(__name__)

DEFAULT_SHARD_MB = 256


def relative_names(image_paths: Sequence[str]) -> list[str]:
    """Image paths -> names relative to their common folder ('000000000139.jpg', 'a/b.jpg')."""
    dirs = [p.replace("\\", "/").rsplit("/", 1)[0] if "/" in p else "" for p in image_paths]
    parts = [d.split("/") for d in dirs]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    prefix = "/".join(common)
    cut = len(prefix) + 1 if prefix else 0
    return [p.replace("\\", "/")[cut:] for p in image_paths]


def _ordered_map(fn: Callable[[int], Any], n: int, threads: int) -> Iterator[Any]:
    """fn(0), fn(1), ... computed by `threads` threads, yielded in order, a bounded window ahead."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        window: collections.deque = collections.deque()
        nxt = 0
        while nxt < n or window:
            while nxt < n and len(window) < 4 * max(1, threads):
                window.append(pool.submit(fn, nxt))
                nxt += 1
            yield window.popleft().result()


def _encode_like(img: np.ndarray, file_name: str, quality: int) -> bytes:
    import cv2

    png = file_name.lower().endswith(".png")
    ok, buf = cv2.imencode(".png" if png else ".jpg", img,
                           [] if png else [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"cannot re-encode {file_name}")
    return buf.tobytes()


def _prepare(info: DatasetInfo, i: int, name: str, resize: tuple[int, int] | None,
             check: bool, quality: int) -> tuple[ImageRecord, bytes, tuple[int, int], list]:
    """Record i -> (record with labels in the stored image's pixels, image bytes, original
    (h, w), warnings [(kind, example)])."""
    rec = info.records[i]
    if info.images is not None:  # re-packing a packed set
        data = info.images.record(i).image
    else:
        try:
            data = paths.read_bytes(rec.image_path)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read image {rec.image_path!r} of {info.source}: {e}") \
                from None
    warns = []
    orig = (int(rec.height), int(rec.width))
    if not (check or resize):
        return rec, data, orig, warns
    try:
        img = decode_image(data, repr(rec.image_path))
    except UnreadableImageError:
        warns.append(("undecodable images (stored as they are; training replaces them as with "
                      "the folder layout)", rec.image_path))
        return rec, data, orig, warns
    hw = (int(img.shape[0]), int(img.shape[1]))
    if hw != orig:
        warns.append(("images whose size differs from the annotation (stored as they are)",
                      f"{rec.image_path}: {hw[0]}x{hw[1]}, annotated {orig[0]}x{orig[1]}"))
    if resize and (hw[0] > resize[0] or hw[1] > resize[1]):
        from yolox_jax.data.transforms import resize_fit

        small, r = resize_fit(img, resize)
        data = _encode_like(small, name, quality)
        rec = ImageRecord(
            image_path=rec.image_path, image_id=rec.image_id, height=int(small.shape[0]),
            width=int(small.shape[1]), boxes=np.asarray(rec.boxes, np.float64) * r,
            classes=rec.classes, ignore=rec.ignore, difficult=rec.difficult,
        )
        warns.append(("pre-resized", rec.image_path))
    return rec, data, orig, warns


def pack_dataset(
    info: DatasetInfo,
    out: str,
    *,
    name: str = "data",
    shard_mb: float = DEFAULT_SHARD_MB,
    num_shards: int = 0,
    resize: Sequence[int] | None = None,
    jpeg_quality: int = 95,
    check_images: bool = True,
    threads: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `info` as a shard set at `out` (local folder or URL) -> the index written.

    Shards roll over at `shard_mb` MiB of records, or `num_shards` > 0 splits the records into
    that many shards of equal count. See the module docstring for the rest.
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = os.fspath(out).rstrip("/")
    n = len(info.records)
    if n == 0:
        raise DatasetError(f"{info.source}: no records to pack")
    if paths.exists(paths.join(out, shards.INDEX)) and not overwrite:
        raise DatasetError(f"{paths.join(out, shards.INDEX)} exists: {out} already holds a shard "
                           "set (pass --overwrite to replace it)")
    resize_hw = None
    if resize:
        resize_hw = (int(resize[0]), int(resize[-1]))
        if min(resize_hw) <= 0:
            raise ValueError(f"--resize must be positive, got {resize}")
    remote = paths.is_url(out)
    work = tempfile.mkdtemp(prefix="yolox_jax_pack_") if remote else paths.local(out)
    os.makedirs(work, exist_ok=True)
    names = relative_names([r.image_path for r in info.records])
    per_shard = -(-n // num_shards) if num_shards > 0 else 0
    limit = int(shard_mb * 2**20)
    threads = threads or min(8, (os.cpu_count() or 2))

    shard_specs: list[dict[str, Any]] = []
    stored: list[ImageRecord] = []
    orig_hw: list[tuple[int, int]] = []
    pack_warn = collections.Counter()
    pack_examples: dict[str, list[str]] = {}
    writer, cur_bytes, cur_count, image_bytes = None, 0, 0, 0

    def close_shard() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            writer = None

    def prep(i: int):
        return _prepare(info, i, names[i], resize_hw, check_images, jpeg_quality)

    try:
        bar = tqdm(total=n, desc=f"pack {name}", unit="img", disable=not progress)
        for i, (rec, data, orig, warns) in enumerate(_ordered_map(prep, n, threads)):
            payload = shards.encode_record(i, rec, names[i], data, orig)
            roll = (writer is None
                    or (per_shard and cur_count >= per_shard)
                    or (not per_shard and cur_bytes and cur_bytes + len(payload) > limit))
            if roll:
                close_shard()
                fname = f"{name}-{len(shard_specs):05d}.array_record"
                shard_specs.append({"file": fname, "first": i, "num_records": 0})
                writer = ArrayRecordWriter(os.path.join(work, fname), shards.WRITER_OPTIONS)
                cur_bytes = cur_count = 0
            writer.write(payload)
            shard_specs[-1]["num_records"] += 1
            cur_bytes += len(payload)
            cur_count += 1
            image_bytes += len(data)
            stored.append(rec)
            orig_hw.append(orig)
            for kind, example in warns:
                pack_warn[kind] += 1
                ex = pack_examples.setdefault(kind, [])
                if len(ex) < 5:
                    ex.append(example)
            bar.update(1)
        bar.close()
        close_shard()

        for spec in shard_specs:
            local_file = os.path.join(work, spec["file"])
            spec["bytes"] = os.path.getsize(local_file)
            spec["sha256"] = shards._sha256_file(local_file)
        labels = shards.labels_to_npz(stored, names, orig_hw)
        with open(os.path.join(work, shards.LABELS), "wb") as f:
            f.write(labels)
        coco_gt = None
        if info.format == "coco":
            gt_name = os.path.basename(info.source.rstrip("/"))
            gt_bytes = paths.read_bytes(info.source)
            with open(os.path.join(work, gt_name), "wb") as f:
                f.write(gt_bytes)
            coco_gt = {"file": gt_name, "bytes": len(gt_bytes),
                       "sha256": shards.sha256_bytes(gt_bytes)}
        warnings = {"counts": dict(info.warnings.counts), "examples": dict(info.warnings.examples)}
        for kind, count in pack_warn.items():
            if kind == "pre-resized":
                continue
            warnings["counts"][f"pack: {kind}"] = count
            warnings["examples"][f"pack: {kind}"] = pack_examples[kind]
        index = {
            "kind": shards.KIND, "version": shards.VERSION, "name": name,
            "num_records": n, "num_boxes": int(sum(len(r.boxes) for r in stored)),
            "dataset": {
                "format": info.format, "source": info.source,
                "class_names": list(info.class_names),
                "category_ids": [int(c) for c in info.category_ids],
                "stats": dict(info.stats), "warnings": warnings,
            },
            "resize": list(resize_hw) if resize_hw else None,
            "jpeg_quality": int(jpeg_quality) if resize_hw else None,
            "shards": shard_specs,
            "labels": {"file": shards.LABELS, "bytes": len(labels),
                       "sha256": shards.sha256_bytes(labels)},
            "coco_gt": coco_gt,
            "pack": {"seconds": round(time.perf_counter() - t0, 2), "image_bytes": image_bytes,
                     "images_resized": pack_warn.get("pre-resized", 0),
                     "images_checked": bool(check_images)},
        }
        index_bytes = json.dumps(index, indent=1).encode()
        if remote:
            paths.makedirs(out)
            files = [s["file"] for s in shard_specs] + [shards.LABELS] + (
                [coco_gt["file"]] if coco_gt else [])
            for f in tqdm(files, desc=f"upload {out}", disable=not progress):
                paths.copy(os.path.join(work, f), paths.join(out, f))
        paths.write_bytes(paths.join(out, shards.INDEX), index_bytes)
    finally:
        close_shard()
        if remote:
            shutil.rmtree(work, ignore_errors=True)
    total = sum(s["bytes"] for s in shard_specs)
    extra = "".join(f"\n  {k}: {v} (e.g. {'; '.join(pack_examples[k][:2])})"
                    for k, v in pack_warn.items())
    log.info("packed %d records (%d boxes) into %d shards, %.1f MiB, at %s in %.1f s%s", n,
             index["num_boxes"], len(shard_specs), total / 2**20, out, index["pack"]["seconds"],
             extra)
    return index


# ------------------------------------------------------------------------------ command line
def _add_coco(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="COCO root (or any folder/URL the json is relative to)")
    p.add_argument("--ann", required=True,
                   help="json relative to data_dir (or its annotations/), or absolute")
    p.add_argument("--images", default=None,
                   help="image folder relative to data_dir; default: from the json name")


def _read_coco(args: argparse.Namespace) -> DatasetInfo:
    from yolox_jax.data.readers import read_coco

    return read_coco(args.data_dir, args.ann, args.images)


def _add_voc(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", help="VOC root with Annotations/, JPEGImages/, ImageSets/Main/")
    p.add_argument("--split", required=True, help="ImageSets/Main/<split>.txt")
    p.add_argument("--class-names", default=None,
                   help="comma-separated class names (default: the 20 VOC classes)")
    p.add_argument("--no-keep-difficult", action="store_true",
                   help="flag difficult boxes `ignore` (the official default keeps them)")


def _read_voc(args: argparse.Namespace) -> DatasetInfo:
    from yolox_jax.data.readers import read_voc

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    return read_voc(args.data_dir, args.split, names, keep_difficult=not args.no_keep_difficult)


# Dataset formats the packer reads: name -> (add its arguments, read it into a DatasetInfo).
# A new reader in readers.py becomes packable by adding one entry here.
FORMATS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                         Callable[[argparse.Namespace], DatasetInfo]]] = {
    "coco": (_add_coco, _read_coco),
    "voc": (_add_voc, _read_voc),
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yolox_jax.data.pack",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="format", required=True)
    for fmt, (add, _) in FORMATS.items():
        q = sub.add_parser(fmt, help=f"pack a {fmt} dataset")
        add(q)
        q.add_argument("--out", required=True, help="output folder or URL (gs://...)")
        q.add_argument("--name", default=None,
                       help="shard file prefix (default: the split / json name)")
        q.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB,
                       help="roll over to a new shard at this size")
        q.add_argument("--num-shards", type=int, default=0,
                       help="exactly this many shards of equal record counts instead")
        q.add_argument("--resize", type=int, nargs="+", default=None, metavar="S",
                       help="pre-resize images larger than S (or H W) to fit it")
        q.add_argument("--jpeg-quality", type=int, default=95)
        q.add_argument("--no-check-images", action="store_true",
                       help="do not decode the images while packing")
        q.add_argument("--threads", type=int, default=0, help="reading threads (0: auto)")
        q.add_argument("--overwrite", action="store_true")
        q.add_argument("--verify", action="store_true",
                       help="read every record back and check it afterwards")
        q.add_argument("--no-progress", action="store_true")
    v = sub.add_parser("verify", help="check every record of a shard set against its index")
    v.add_argument("location")
    v.add_argument("--local-dir", default="", help="where to copy a remote set first")
    return p


def _default_name(args: argparse.Namespace) -> str:
    if args.format == "voc":
        return args.split
    base = os.path.basename(getattr(args, "ann", "") or "data")
    return base[:-5] if base.endswith(".json") else base or "data"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m yolox_jax.data.pack ...` -> exit status (0 ok, 2 bad input)."""
    args = make_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.format == "verify":
            counts = shards.verify_shards(args.location, local_dir=args.local_dir)
            print(f"{args.location}: {counts['records']} records in {counts['shards']} shards "
                  "verified")
            return 0
        info = FORMATS[args.format][1](args)
        index = pack_dataset(
            info, args.out, name=args.name or _default_name(args), shard_mb=args.shard_mb,
            num_shards=args.num_shards, resize=args.resize, jpeg_quality=args.jpeg_quality,
            check_images=not args.no_check_images, threads=args.threads,
            progress=not args.no_progress, overwrite=args.overwrite,
        )
        total = sum(s["bytes"] for s in index["shards"])
        print(f"{args.out}: {index['num_records']} records, {index['num_boxes']} boxes, "
              f"{len(index['shards'])} shards, {total / 2**20:.1f} MiB, "
              f"{index['pack']['seconds']:.1f} s")
        if args.verify:
            counts = shards.verify_shards(args.out)
            print(f"verified {counts['records']} records")
    except (DatasetError, UnreadableImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
