"""Decoded training images at the official `load_resized_img` scale, optionally cached.

The official `COCODataset.pull_item` returns the image resized (no padding) so that it fits the
input size, r = min(H / h, W / w), and its `CacheDataset` can hold these resized images in RAM or
as one `.npy` per image on disk. `ImageStore` does the same with three modes:

* `""`: decode (`cv2.imread`, colour) and `resize_fit` at every load.
* `"disk"`: one `.npy` per image under `cache_dir/<H>x<W>/` plus `manifest.json` recording, per
  image, the source path, its size and mtime, the cached shape and a CRC-32 of the pixels. At
  construction (in the main process, before any worker starts) every entry whose source changed
  (size or mtime), whose file is missing or has the wrong byte size (truncated), or that the
  manifest does not know is rebuilt; the official trusts whatever `.npy` it finds. At each load
  the CRC is checked: a corrupt entry (bit rot, a partial write) is decoded from the source again,
  rewritten atomically and reported, never returned.
* `"ram"`: the same files in a private temporary folder under `/dev/shm` (shared, copy-free, by
  all grain worker processes; deleted by `close()`), when it has room; else no cache, with a
  warning, as the official falls back when RAM is short.

A source that cannot be decoded raises `UnreadableImageError` at load time (the pipeline then
substitutes another record); in the cache it is recorded as such and retried when it changes.

Sources: image files by path (`FileImages`, the folder layout), or any image source with the same
four methods, e.g. the records of a packed shard set (`data.shards.ShardImages`): `read(i)`
decodes image i, `key(i)` names it (cache entries are keyed on it), `stat(i)` changes when it
changes (files: size and mtime; shards: the shard's size and sha256) and `len()`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from yolox_jax.data.io import UnreadableImageError, read_image
from yolox_jax.data.transforms import resize_fit
from yolox_jax.home import cache_root

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
MODES = ("", "ram", "disk")
__all__ = ["FileImages", "ImageStore", "UnreadableImageError", "load_resized", "read_image"]


def load_resized(
    path: str | os.PathLike, input_size: Sequence[int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Official `load_resized_img`: decode, resize to fit `input_size` (H, W).

    -> ([h', w', 3] BGR uint8, (h, w) of the decoded source image).
    """
    return _fit(read_image(path), input_size)


def _fit(img: np.ndarray, input_size: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    resized, _ = resize_fit(img, input_size)
    return np.ascontiguousarray(resized), (int(img.shape[0]), int(img.shape[1]))


class FileImages:
    """Image files by path: the folder layout as an image source (see the module docstring)."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [_abs(os.fspath(p)) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, i: int) -> str:
        return self.paths[i]

    def stat(self, i: int) -> tuple[int, int] | None:
        return _source_stat(self.paths[i])

    def read(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])


def _abs(path: str) -> str:
    from yolox_jax.data import paths

    return path if paths.is_url(path) else os.path.abspath(paths.local(path))


def _checksum(img: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(img).data) & 0xFFFFFFFF


def _source_stat(path: str) -> tuple[int, int] | None:
    from yolox_jax.data import paths

    try:
        if paths.is_url(path):
            return paths.size(path), 0
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _npy_nbytes(shape: Sequence[int]) -> int:
    """Byte size of the C-order uint8 `.npy` file of `shape` that `np.save` writes."""
    buf = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.tell() + int(np.prod(shape))


def _atomic_save(path: Path, img: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(img), allow_pickle=False)
    os.replace(tmp, path)


def _entry_name(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:24] + ".npy"


def default_cache_dir() -> Path:
    """`home.cache_root("images")`: datasets are often read-only."""
    return cache_root("images")


class ImageStore:
    """Index -> decoded image resized to fit `input_size`, from the sources or a cache.

    `paths`: image files; or `images`: any image source (module docstring), paths then None.
    Picklable (grain ships it to its worker processes): it holds paths (or the source) and the
    small manifest, never pixels. Only the instance that created a RAM cache deletes it.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike] | None,
        input_size: Sequence[int],
        mode: str = "",
        cache_dir: str | os.PathLike = "",
        num_threads: int | None = None,
        source_hw: Sequence[tuple[int, int]] | None = None,
        images: Any = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"data.cache must be one of {MODES}, got {mode!r}")
        if (paths is None) == (images is None):
            raise ValueError("ImageStore takes either image paths or an image source")
        self.images = images if images is not None else FileImages(paths)
        self.paths = [self.images.key(i) for i in range(len(self.images))]  # cache keys
        self._first = {}  # key -> first index (the folder layout may list a file twice)
        for i, k in enumerate(self.paths):
            self._first.setdefault(k, i)
        if source_hw is not None and len(source_hw) != len(self.paths):
            raise ValueError(f"{len(source_hw)} source sizes for {len(self.paths)} images")
        self.source_hw = None if source_hw is None else [tuple(map(int, s)) for s in source_hw]
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mode = mode
        self.root: Path | None = None
        self.entries: dict[str, dict[str, Any]] = {}
        self.build_report: dict[str, int] = {}
        self._owner = False
        if mode == "":
            return
        threads = num_threads or min(8, max(1, (os.cpu_count() or 2) - 1))
        if mode == "ram":
            self.root = self._ram_root()
            if self.root is None:
                self.mode = ""
                return
            self._owner = True
        else:
            base = Path(cache_dir) if cache_dir else default_cache_dir()
            self.root = base / f"{self.input_size[0]}x{self.input_size[1]}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.build_report = self._build(threads)

    # ------------------------------------------------------------------------------------------

    def _ram_root(self) -> Path | None:
        """A private folder in /dev/shm if the resized images fit (estimated on 32 of them)."""
        shm = Path("/dev/shm")
        if not shm.is_dir():
            log.warning("data.cache='ram': /dev/shm is absent; training without an image cache")
            return None
        sample = range(0, len(self.paths), max(1, len(self.paths) // 32))[:32]
        nbytes = []
        for i in sample:
            try:
                nbytes.append(self._decode(i)[0].nbytes)
            except UnreadableImageError:
                continue
        need = (np.mean(nbytes) if nbytes else 0.0) * len(self.paths)
        st = os.statvfs(shm)
        free = st.f_bavail * st.f_frsize
        if need > 0.9 * free:
            log.warning(
                "data.cache='ram': the resized images need about %.1f GB but /dev/shm has %.1f GB "
                "free; training without an image cache", need / 2**30, free / 2**30,
            )
            return None
        return Path(tempfile.mkdtemp(prefix="yolox_jax_ram_cache_", dir=shm))

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        assert self.root is not None
        path = self.root / MANIFEST
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if (
                data.get("version") != MANIFEST_VERSION
                or list(data.get("input_size", ())) != list(self.input_size)
                or not isinstance(data.get("entries"), dict)
            ):
                raise ValueError("version or input size differs")
            return data["entries"]
        except (ValueError, OSError, AttributeError) as e:
            log.warning("image cache manifest %s is unusable (%s); rebuilding it", path, e)
            return {}

    def _write_manifest(self, entries: dict[str, dict[str, Any]]) -> None:
        assert self.root is not None
        path = self.root / MANIFEST
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        data = {"version": MANIFEST_VERSION, "input_size": list(self.input_size),
                "entries": entries}
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)

    def _decode(self, index: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Official `load_resized_img` of image `index`: decode, resize to fit."""
        return _fit(self.images.read(index), self.input_size)

    def _stat(self, source: str) -> tuple[int, int] | None:
        try:
            st = self.images.stat(self._first[source])
        except (OSError, ValueError):
            return None
        return None if st is None else (int(st[0]), int(st[1]))

    def _valid(self, source: str, entry: dict[str, Any] | None) -> bool:
        """Cheap staleness check: source size/mtime unchanged and the file has the right size."""
        assert self.root is not None
        if not entry or self._stat(source) != (entry.get("size"), entry.get("mtime_ns")):
            return False
        if "error" in entry:
            return True  # still the same unreadable file
        try:
            return (self.root / entry["file"]).stat().st_size == _npy_nbytes(entry["shape"])
        except (OSError, KeyError, TypeError):
            return False

    def _make_entry(self, source: str) -> dict[str, Any]:
        assert self.root is not None
        stat = self._stat(source)
        size, mtime = stat if stat is not None else (None, None)
        try:
            img, hw = self._decode(self._first[source])
        except UnreadableImageError as e:
            return {"size": size, "mtime_ns": mtime, "error": str(e)}
        name = _entry_name(source)
        _atomic_save(self.root / name, img)
        return {"size": size, "mtime_ns": mtime, "file": name, "shape": list(img.shape),
                "source_hw": list(hw), "crc32": _checksum(img)}

    def _build(self, threads: int) -> dict[str, int]:
        old = self._read_manifest()
        unique = list(dict.fromkeys(self.paths))
        todo = [p for p in unique if not self._valid(p, old.get(p))]
        entries = {p: old[p] for p in unique if p not in set(todo)}
        if todo:
            log.info("image cache %s: decoding %d of %d images", self.root, len(todo), len(unique))
            with ThreadPoolExecutor(max(1, threads)) as pool:
                for p, entry in zip(todo, pool.map(self._make_entry, todo), strict=True):
                    entries[p] = entry
            self._write_manifest(entries)
        self.entries = entries
        return {"reused": len(unique) - len(todo), "rebuilt": len(todo),
                "unreadable": sum("error" in e for e in entries.values())}

    # ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def expected_hw(self, index: int) -> tuple[int, int] | None:
        """(h, w) the annotation gives for image `index` (None when unknown or not positive)."""
        if self.source_hw is None or min(self.source_hw[index]) <= 0:
            return None
        return self.source_hw[index]

    def load(self, index: int) -> tuple[np.ndarray, tuple[int, int], bool]:
        """-> (image [h', w', 3] BGR uint8 resized to fit input_size, source (h, w), repaired).

        `repaired` is True when a corrupt cache entry was found (CRC or shape mismatch, unreadable
        file) and replaced by a fresh decode of the source. Raises UnreadableImageError.
        """
        source = self.paths[index]
        if self.mode == "" or self.root is None:
            img, hw = self._decode(index)
            return img, hw, False
        entry = self.entries.get(source)
        if entry is None or "error" in entry:
            # Unknown (not built) or unreadable at build time: the source decides now.
            img, hw = self._decode(index)
            return img, hw, False
        try:
            img = np.load(self.root / entry["file"], allow_pickle=False)
            ok = (
                img.dtype == np.uint8
                and list(img.shape) == list(entry["shape"])
                and _checksum(img) == entry["crc32"]
            )
        except (OSError, ValueError, EOFError):
            ok = False
        if ok:
            return img, (int(entry["source_hw"][0]), int(entry["source_hw"][1])), False
        img, hw = self._decode(index)
        if list(img.shape) == list(entry["shape"]) and _checksum(img) == entry["crc32"]:
            _atomic_save(self.root / entry["file"], img)  # same bytes as the manifest records
        return img, hw, True

    def close(self) -> None:
        """Delete a RAM cache this instance created (a no-op otherwise)."""
        if self._owner and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self._owner = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_owner"] = False  # copies (grain workers) never delete the RAM cache
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
