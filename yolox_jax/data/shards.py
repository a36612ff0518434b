"""Packed datasets: ArrayRecord shards of encoded images and their labels, readable from anywhere.

A shard set is a folder or an object-storage prefix (written by `python -m yolox_jax.data.pack`):

    index.json                   dataset metadata, and per shard: file, record count, first
                                 record, byte size, sha256 (so a disagreeing index is detected)
    labels.npz                   every record's labels as flat arrays (what the training stream
                                 and evaluation need up front, without reading one image)
    <name>-00000.array_record    one record per image, in dataset order (random access)
    <the COCO json>              COCO only: the source annotations, for pycocotools

Record i (any shard) is self-contained: b"YXJ1", uint32 header length, a JSON header
(`i`, image_id, file_name, height, width, orig_height, orig_width, k, image_bytes, crc32 of the
image bytes), then boxes float64 [k, 4] xyxy pixels, classes int64 [k], ignore uint8 [k],
difficult uint8 [k] (little endian), then the image file's bytes as stored (JPEG/PNG; re-encoded
only when the packer pre-resized it). Labels are in the image's pixels (height x width; the
original size is kept beside them).

Reading (`open_shards`): `index.json` and `labels.npz` are read through `yolox_jax.data.paths`
(local, `file://`, `gs://` ... through etils.epath). Records are read by the native ArrayRecord
reader: in place for local sets and for `gs://` (the reader's own GCS client); sets on any other
URL scheme, or any remote set when `local_dir` is given, are first copied to local disk once per
host (sizes and sha256 checked against the index, copies reused while they match).
Opening checks every shard's size, ArrayRecord structure, record count and first record against
the index; `verify_shards` reads and checks every record (the packer runs it with `--verify`).

Errors: `ShardError` (a DatasetError) for a set that cannot be used (it names the file and what
disagrees); `ShardRecordError` (an UnreadableImageError) for one record whose bytes do not parse
or disagree with the index (it names the shard, the position in it and the dataset index): the
training stream replaces such a record like an undecodable image file and counts it, evaluation
stops on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from yolox_jax.data import paths
from yolox_jax.data.io import UnreadableImageError, decode_image
from yolox_jax.data.readers import (
    MAX_EXAMPLES,
    DatasetError,
    DatasetInfo,
    ImageRecord,
    ReadWarnings,
)
from yolox_jax.home import cache_root

log = logging.getLogger(__name__)

KIND = "yolox_jax.shards"
VERSION = 1
INDEX = "index.json"
LABELS = "labels.npz"
MAGIC = b"YXJ1"
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: cheap random reads
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # random access
_LABEL_KEYS = ("offsets", "boxes", "classes", "ignore", "difficult", "height", "width",
               "orig_height", "orig_width", "image_id", "file_name")


class ShardError(DatasetError):
    """A shard set that cannot be used as it is (the message names the file)."""


class ShardRecordError(UnreadableImageError):
    """One record that does not parse or disagrees with the index (names shard and record)."""


# ------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class PackedRecord:
    """A parsed record: the labels (as an ImageRecord would hold them) and the image bytes."""

    index: int
    image_id: int | str
    file_name: str
    height: int
    width: int
    orig_height: int
    orig_width: int
    boxes: np.ndarray  # [K, 4] float64
    classes: np.ndarray  # [K] int64
    ignore: np.ndarray  # [K] bool
    difficult: np.ndarray  # [K] bool
    image: bytes


def encode_record(
    index: int, rec: ImageRecord, file_name: str, image: bytes, orig_hw: Sequence[int]
) -> bytes:
    """One dataset record (labels in the stored image's pixels) + its image bytes -> bytes."""
    k = len(rec.boxes)
    iid = rec.image_id if isinstance(rec.image_id, str) else int(rec.image_id)
    header = json.dumps({
        "i": int(index), "image_id": iid, "file_name": file_name, "height": int(rec.height),
        "width": int(rec.width), "orig_height": int(orig_hw[0]), "orig_width": int(orig_hw[1]),
        "k": k, "image_bytes": len(image), "crc32": zlib.crc32(image) & 0xFFFFFFFF,
    }, separators=(",", ":")).encode()
    return b"".join([
        MAGIC, struct.pack("<I", len(header)), header,
        np.ascontiguousarray(rec.boxes, "<f8").reshape(k, 4).tobytes(),
        np.ascontiguousarray(rec.classes, "<i8").reshape(k).tobytes(),
        np.asarray(rec.ignore, np.uint8).reshape(k).tobytes(),
        np.asarray(rec.difficult, np.uint8).reshape(k).tobytes(),
        image,
    ])


def parse_record(data: bytes, where: str) -> PackedRecord:
    """Record bytes -> PackedRecord; ShardRecordError naming `where` if they do not parse."""
    def bad(what: str) -> ShardRecordError:
        return ShardRecordError(f"{where}: {what}")

    if len(data) < 8 or data[:4] != MAGIC:
        raise bad(f"not a yolox-jax record (starts with {bytes(data[:8])!r}, expected "
                  f"{MAGIC!r}): a foreign or corrupt shard")
    (hlen,) = struct.unpack("<I", data[4:8])
    try:
        h = json.loads(bytes(data[8:8 + hlen]))
        k, nimg = int(h["k"]), int(h["image_bytes"])
        fields = {key: h[key] for key in ("i", "image_id", "file_name", "height", "width",
                                          "orig_height", "orig_width", "crc32")}
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"record header does not parse ({e!r})") from None
    if k < 0 or nimg < 0:
        raise bad(f"record header has k={k}, image_bytes={nimg}")
    start = 8 + hlen
    need = start + 42 * k + nimg
    if len(data) != need:
        raise bad(f"record is {len(data)} bytes, its header describes {need} ({k} boxes, "
                  f"{nimg} image bytes): truncated or corrupt labels")
    o = start
    boxes = np.frombuffer(data, "<f8", 4 * k, o).reshape(k, 4).astype(np.float64)
    o += 32 * k
    classes = np.frombuffer(data, "<i8", k, o).astype(np.int64)
    o += 8 * k
    ignore = np.frombuffer(data, np.uint8, k, o).astype(bool)
    difficult = np.frombuffer(data, np.uint8, k, o + k).astype(bool)
    image = bytes(data[o + 2 * k:])
    if zlib.crc32(image) & 0xFFFFFFFF != int(fields["crc32"]):
        raise bad("image bytes fail their CRC-32 (corrupt record)")
    return PackedRecord(
        index=int(fields["i"]), image_id=fields["image_id"], file_name=str(fields["file_name"]),
        height=int(fields["height"]), width=int(fields["width"]),
        orig_height=int(fields["orig_height"]), orig_width=int(fields["orig_width"]),
        boxes=boxes, classes=classes, ignore=ignore, difficult=difficult, image=image,
    )


# ------------------------------------------------------------------------------ labels
def labels_to_npz(records: Sequence[ImageRecord], file_names: Sequence[str],
                  orig_hw: Sequence[Sequence[int]]) -> bytes:
    """The labels of every record as flat arrays (compressed npz bytes, no pickles)."""
    counts = [len(r.boxes) for r in records]
    ids = [r.image_id for r in records]
    arrays = {
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "boxes": np.concatenate([np.asarray(r.boxes, np.float64).reshape(-1, 4)
                                 for r in records] + [np.zeros((0, 4))]),
        "classes": np.concatenate([np.asarray(r.classes, np.int64).reshape(-1)
                                   for r in records] + [np.zeros(0, np.int64)]),
        "ignore": np.concatenate([np.asarray(r.ignore, bool) for r in records]
                                 + [np.zeros(0, bool)]),
        "difficult": np.concatenate([np.asarray(r.difficult, bool) for r in records]
                                    + [np.zeros(0, bool)]),
        "height": np.array([r.height for r in records], np.int64),
        "width": np.array([r.width for r in records], np.int64),
        "orig_height": np.array([hw[0] for hw in orig_hw], np.int64),
        "orig_width": np.array([hw[1] for hw in orig_hw], np.int64),
        "image_id": (np.array([str(i) for i in ids]) if any(isinstance(i, str) for i in ids)
                     else np.array(ids, np.int64)),
        "file_name": np.array(list(file_names), dtype=str),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _labels_from_npz(data: bytes, where: str, n: int) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in _LABEL_KEYS}
    except (ValueError, KeyError, OSError, EOFError) as e:
        raise ShardError(f"{where}: not a readable labels file ({e})") from None
    off = arrays["offsets"]
    m = len(arrays["boxes"])
    per_record = ("height", "width", "orig_height", "orig_width", "image_id", "file_name")
    if (len(off) != n + 1 or off[0] != 0 or off[-1] != m or np.any(np.diff(off) < 0)
            or arrays["boxes"].shape != (m, 4)
            or any(len(arrays[k]) != m for k in ("classes", "ignore", "difficult"))
            or any(len(arrays[k]) != n for k in per_record)):
        raise ShardError(f"{where}: label arrays are inconsistent with each other or with the "
                         f"index's {n} records")
    return arrays


def _sha256_file(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with paths.open_file(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ index
def read_index(location: str) -> dict[str, Any]:
    """`location/index.json`, checked to be a shard set index of this version."""
    path = paths.join(location, INDEX)
    try:
        text = paths.read_text(path)
    except FileNotFoundError:
        raise ShardError(f"{path} not found: {location!r} is not a shard set written by "
                         "`python -m yolox_jax.data.pack` (or the packing did not finish)"
                         ) from None
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot read the shard index {path}: {e}") from None
    try:
        index = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShardError(f"malformed shard index {path}: {e}") from None
    kind = index.get("kind") if isinstance(index, dict) else type(index).__name__
    if kind != KIND:
        raise ShardError(f"{path} is not a yolox-jax shard index (kind {kind!r}, expected "
                         f"{KIND!r})")
    if index.get("version") != VERSION:
        raise ShardError(f"{path}: shard format version {index.get('version')!r}, this yolox-jax "
                         f"reads version {VERSION}; re-pack the dataset")
    try:
        shards = index["shards"]
        total = sum(int(s["num_records"]) for s in shards)
        first = [int(s["first"]) for s in shards]
        [(str(s["file"]), int(s["bytes"]), str(s["sha256"])) for s in shards]
        for key in ("format", "class_names", "category_ids"):
            index["dataset"][key]  # noqa: B018 - presence check
        index["labels"]["file"]  # noqa: B018
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{path}: incomplete shard index ({e!r} missing or malformed)") from None
    expect = np.concatenate([[0], np.cumsum([int(s["num_records"]) for s in shards])])[:-1]
    if total != int(index.get("num_records", -1)) or first != expect.tolist() or not shards:
        raise ShardError(f"{path}: shard record counts ({total} in {len(shards)} shards, firsts "
                         f"{first[:5]}...) disagree with num_records {index.get('num_records')}")
    index["location"] = location
    return index


def default_local_dir() -> str:
    """`home.cache_root("shards")`: per-host copies of remote sets."""
    return str(cache_root("shards"))


def _stage(location: str, files: Sequence[dict[str, Any]], local_dir: str) -> str:
    """Copy the shard files of a remote set to `local_dir/<hash of location>/` (reused while
    size and sha256 match the index) -> the local folder."""
    dest = os.path.join(local_dir, hashlib.sha1(location.encode()).hexdigest()[:16])
    os.makedirs(dest, exist_ok=True)
    for s in files:
        target = os.path.join(dest, s["file"])
        marker = target + ".sha256"
        if (os.path.isfile(target) and os.path.getsize(target) == int(s["bytes"])
                and os.path.isfile(marker) and paths.read_text(marker).strip() == s["sha256"]):
            continue
        src = paths.join(location, s["file"])
        log.info("copying shard %s to %s", src, target)
        try:
            paths.copy(src, target)
        except (OSError, ValueError) as e:
            raise ShardError(f"cannot copy shard {src} to {target}: {e}") from None
        got_size, got_sha = os.path.getsize(target), _sha256_file(target)
        if (got_size, got_sha) != (int(s["bytes"]), s["sha256"]):
            os.remove(target)
            raise ShardError(
                f"shard {src} is {got_size} bytes with sha256 {got_sha[:16]}..., the index says "
                f"{s['bytes']} bytes, {s['sha256'][:16]}...: the set changed after packing or "
                "the copy is truncated; re-pack or re-upload it"
            )
        paths.write_bytes(marker, s["sha256"].encode())
    return dest


def _reader(path: str):
    from array_record.python.array_record_module import ArrayRecordReader

    return ArrayRecordReader(path, READER_OPTIONS)


# ------------------------------------------------------------------------------ image source
class ShardImages:
    """Dataset index -> image, from the records of a shard set (the `images` of its DatasetInfo).

    Picklable (grain ships it to its workers): it holds shard paths and small per-record
    arrays; each process opens its own readers lazily. `read(i)` checks the record against the
    index (dataset index, image id, box count) so a shuffled or foreign shard cannot feed wrong
    labels silently.
    """

    def __init__(self, location: str, read_paths: Sequence[str], index: dict[str, Any],
                 labels: dict[str, np.ndarray]) -> None:
        self.location = location
        self.read_paths = list(read_paths)
        self.index = index
        shards = index["shards"]
        self.files = [str(s["file"]) for s in shards]
        self.firsts = np.array([int(s["first"]) for s in shards], np.int64)
        self.counts = np.array([int(s["num_records"]) for s in shards], np.int64)
        self.versions = [(int(s["bytes"]), int(str(s["sha256"])[:12], 16)) for s in shards]
        self.num_boxes = np.diff(labels["offsets"]).astype(np.int64)
        self.image_ids = labels["image_id"]
        self._readers: list[Any] = [None] * len(shards)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.counts.sum())

    def locate(self, i: int) -> tuple[int, int]:
        """Dataset index -> (shard number, position in the shard)."""
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} outside the {len(self)} records of {self.location}")
        s = int(np.searchsorted(self.firsts, i, side="right")) - 1
        return s, int(i - self.firsts[s])

    def where(self, i: int) -> str:
        s, pos = self.locate(i)
        return f"shard {paths.join(self.location, self.files[s])} record {pos} (dataset record {i})"

    def key(self, i: int) -> str:
        """A stable name of record i (image caches key on it)."""
        s, pos = self.locate(i)
        return f"{paths.join(self.location, self.files[s])}#{pos}"

    def stat(self, i: int) -> tuple[int, int]:
        """(shard bytes, shard sha256 prefix): changes whenever the record's shard changes."""
        return self.versions[self.locate(i)[0]]

    def _open(self, s: int) -> Any:
        r = self._readers[s]
        if r is None:
            with self._lock:
                r = self._readers[s]
                if r is None:
                    try:
                        r = _reader(self.read_paths[s])
                    except (RuntimeError, OSError, ValueError) as e:
                        raise ShardError(f"cannot open shard {self.read_paths[s]}: {e}") from None
                    self._readers[s] = r
        return r

    def raw(self, i: int) -> bytes:
        s, pos = self.locate(i)
        try:
            return self._open(s).read([pos])[0]
        except (RuntimeError, OSError, ValueError, IndexError) as e:
            raise ShardRecordError(f"{self.where(i)}: cannot be read ({e})") from None

    def record(self, i: int) -> PackedRecord:
        """Record i, parsed and checked against the index."""
        rec = parse_record(self.raw(i), self.where(i))
        want_id = self.image_ids[i].item()
        if (rec.index, len(rec.boxes)) != (i, int(self.num_boxes[i])) or \
                str(rec.image_id) != str(want_id):
            raise ShardRecordError(
                f"{self.where(i)}: the record is dataset record {rec.index} (image "
                f"{rec.image_id!r}, {len(rec.boxes)} boxes), the index says record {i} (image "
                f"{want_id!r}, {int(self.num_boxes[i])} boxes): shard and index disagree"
            )
        return rec

    def read(self, i: int) -> np.ndarray:
        """Record i's image -> [h, w, 3] BGR uint8 (the project's one decoder)."""
        rec = self.record(i)
        return decode_image(rec.image, f"{rec.file_name!r} in {self.where(i)}")

    def close(self) -> None:
        for r in self._readers:
            if r is not None:
                r.close()
        self._readers = [None] * len(self.files)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"] = [None] * len(self.files)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ------------------------------------------------------------------------------ opening
def _read_paths(location: str, index: dict[str, Any], local_dir: str) -> list[str]:
    files = index["shards"]
    if not paths.is_url(location):
        root = paths.local(location)
        return [os.path.join(root, s["file"]) for s in files]
    if not local_dir and location.startswith("gs://"):
        return [paths.join(location, s["file"]) for s in files]  # the reader's own GCS client
    root = _stage(location, files, local_dir or default_local_dir())
    return [os.path.join(root, s["file"]) for s in files]


def _check_shards(images: ShardImages, index: dict[str, Any]) -> None:
    """Size, ArrayRecord structure, record count and first record of every shard."""
    for s, spec in enumerate(index["shards"]):
        name = paths.join(images.location, spec["file"])
        path = images.read_paths[s]
        try:
            got = paths.size(path)
        except (OSError, ValueError) as e:
            raise ShardError(f"shard {name} listed in {INDEX} cannot be found ({e})") from None
        if got != int(spec["bytes"]):
            raise ShardError(f"shard {name} is {got} bytes, the index says {spec['bytes']}: "
                             "truncated, or replaced after packing")
        try:
            n = images._open(s).num_records()
        except ShardError as e:
            raise ShardError(f"shard {name} is not a readable ArrayRecord file ({e})") from None
        if n != int(spec["num_records"]):
            raise ShardError(f"shard {name} holds {n} ArrayRecord records, the index says "
                             f"{spec['num_records']}: a foreign or corrupt file")
        if n:
            images.record(int(spec["first"]))  # ShardRecordError names shard and record


def open_shards(location: str | os.PathLike, *, local_dir: str = "",
                verify: bool = False) -> DatasetInfo:
    """A shard set -> DatasetInfo whose records hold the labels and whose `images` reads the
    pixels (`ShardImages`). Records name their image by the packed file name.

    location: local folder, `file://`, `gs://` or any epath URL. local_dir: where remote sets
    are copied ("" : `gs://` is read in place, other schemes go to `default_local_dir()`).
    verify: also read and check every record (`verify_shards`).
    """
    location = os.fspath(location).rstrip("/") or "/"
    index = read_index(location)
    labels_spec = index["labels"]
    labels_path = paths.join(location, labels_spec["file"])
    try:
        data = paths.read_bytes(labels_path)
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot read {labels_path} (listed in {INDEX}): {e}") from None
    if (len(data), sha256_bytes(data)) != (int(labels_spec["bytes"]), labels_spec["sha256"]):
        raise ShardError(f"{labels_path} is {len(data)} bytes with another sha256 than the "
                         f"index records ({labels_spec['bytes']} bytes): labels and index "
                         "disagree; re-pack")
    n = int(index["num_records"])
    lab = _labels_from_npz(data, labels_path, n)
    images = ShardImages(location, _read_paths(location, index, local_dir), index, lab)
    _check_shards(images, index)
    if verify:
        verify_shards(location, info_images=images)

    ds = index["dataset"]
    off = lab["offsets"]
    records = []
    for i in range(n):
        a, b = int(off[i]), int(off[i + 1])
        records.append(ImageRecord(
            image_path=str(lab["file_name"][i]), image_id=lab["image_id"][i].item(),
            height=int(lab["height"][i]), width=int(lab["width"][i]),
            boxes=lab["boxes"][a:b], classes=lab["classes"][a:b],
            ignore=lab["ignore"][a:b], difficult=lab["difficult"][a:b],
        ))
    warn = ReadWarnings()
    w = ds.get("warnings", {})
    warn.counts.update({str(k): int(v) for k, v in w.get("counts", {}).items()})
    warn.examples.update({str(k): list(v) for k, v in w.get("examples", {}).items()})
    gt = index.get("coco_gt")
    source = paths.join(location, gt["file"]) if gt else f"{location} (packed from "\
        f"{ds.get('source', '?')})"
    info = DatasetInfo(
        records=records, class_names=tuple(ds["class_names"]),
        category_ids=tuple(int(c) for c in ds["category_ids"]), format=str(ds["format"]),
        source=source, warnings=warn, stats=dict(ds.get("stats", {})), images=images,
    )
    msg = (f"shards {location}: {n} records in {len(index['shards'])} shards"
           + (f", pre-resized to {index['resize']}" if index.get("resize") else "")
           + f"; {info.summary()}")
    log.log(logging.WARNING if warn else logging.INFO, "%s", msg)
    return info


def verify_shards(location: str, *, local_dir: str = "", info_images: ShardImages | None = None,
                  check_sha256: bool = True) -> dict[str, int]:
    """Read every record of a shard set and check it against `labels.npz` and the index (and each
    shard's sha256). Returns counts; raises ShardError listing every problem (first examples)."""
    if info_images is None:
        return verify_shards(location, info_images=open_shards(location, local_dir=local_dir)
                             .images, check_sha256=check_sha256)
    images = info_images
    index = images.index
    problems: list[str] = []
    if check_sha256:
        for s, spec in enumerate(index["shards"]):
            got = _sha256_file(images.read_paths[s])
            if got != spec["sha256"]:
                problems.append(f"shard {paths.join(location, spec['file'])}: sha256 {got[:16]}..."
                                f" differs from the index's {spec['sha256'][:16]}...")
    lab = _labels_from_npz(paths.read_bytes(paths.join(location, index["labels"]["file"])),
                           location, len(images))
    off = lab["offsets"]
    checked = 0
    for i in range(len(images)):
        try:
            rec = images.record(i)
        except ShardRecordError as e:
            problems.append(str(e))
            continue
        a, b = int(off[i]), int(off[i + 1])
        same = (np.array_equal(rec.boxes, lab["boxes"][a:b])
                and np.array_equal(rec.classes, lab["classes"][a:b])
                and np.array_equal(rec.ignore, lab["ignore"][a:b])
                and np.array_equal(rec.difficult, lab["difficult"][a:b])
                and (rec.height, rec.width) == (int(lab["height"][i]), int(lab["width"][i]))
                and rec.file_name == str(lab["file_name"][i]))
        if not same:
            problems.append(f"{images.where(i)}: labels differ from {LABELS}")
            continue
        checked += 1
    if problems:
        raise ShardError(f"{len(problems)} problem(s) in shard set {location}:\n  "
                         + "\n  ".join(problems[:MAX_EXAMPLES * 4]))
    return {"records": checked, "shards": len(index["shards"])}
