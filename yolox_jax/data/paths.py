"""Paths anywhere: local files, `file://` URLs and object storage (`gs://`, `s3://`, ...).

Every dataset file the project reads by name (annotation json / xml, split files, images, shard
sets) goes through these helpers. Local paths and `file://` URLs use the OS directly (the fast
path, and what the native ArrayRecord reader needs); any other `scheme://` URL goes through
`etils.epath`, whose fsspec backend serves `gs://` (with `gcsfs` installed), `s3://` (`s3fs`),
`az://` and `hf://`. Nothing here caches or retries: the backends do.
"""

from __future__ import annotations

import os
import re
from typing import Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
    """True for `scheme://...` other than `file://` (those are read through epath)."""
    s = os.fspath(path)
    return bool(_URL.match(s)) and not s.startswith("file://")


def local(path: PathLike) -> str:
    """A local path as a plain string; `file:///a/b` -> `/a/b` (URLs are returned unchanged)."""
    s = os.fspath(path)
    if s.startswith("file://"):
        rest = s[len("file://"):]
        if not rest.startswith("/"):
            raise ValueError(f"{s!r}: a file:// URL needs an absolute path (file:///abs/path)")
        return rest
    return s


def epath(path: PathLike) -> Any:
    """The `etils.epath.Path` of a URL (imported lazily: local reads never need it)."""
    from etils import epath as ep

    try:
        return ep.Path(os.fspath(path))
    except KeyError as e:  # an unregistered scheme
        raise ValueError(
            f"{os.fspath(path)!r}: no file system for this URL scheme (etils.epath knows "
            "gs://, s3://, az://, hf:// with their fsspec packages installed)"
        ) from e


def join(base: PathLike, *parts: str | os.PathLike) -> str:
    """`os.path.join` that keeps URLs URLs (`gs://b/x` + `y` -> `gs://b/x/y`); as there, a part
    that is absolute (`/a`, `file://...`, `gs://...`) starts the path anew."""
    out = os.fspath(base)
    for part in map(os.fspath, parts):
        if _URL.match(part) or part.startswith("/"):
            out = part
        elif is_url(out):
            out = out.rstrip("/") + "/" + part if part else out.rstrip("/") + "/"
        else:
            out = os.path.join(out, part)
    return out


def isfile(path: PathLike) -> bool:
    if is_url(path):
        p = epath(path)
        return p.exists() and not p.is_dir()
    return os.path.isfile(local(path))


def exists(path: PathLike) -> bool:
    return epath(path).exists() if is_url(path) else os.path.exists(local(path))


def size(path: PathLike) -> int:
    """Size in bytes (raises OSError / FileNotFoundError when missing)."""
    if is_url(path):
        return int(epath(path).stat().length)
    return os.path.getsize(local(path))


def read_bytes(path: PathLike) -> bytes:
    if is_url(path):
        return epath(path).read_bytes()
    with open(local(path), "rb") as f:
        return f.read()


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write a whole file (local: atomically, through a temporary name)."""
    if is_url(path):
        epath(path).write_bytes(data)
        return
    p = local(path)
    tmp = f"{p}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


def makedirs(path: PathLike) -> None:
    if is_url(path):
        epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(local(path), exist_ok=True)


def open_file(path: PathLike, mode: str = "rb") -> Any:
    """A file object for reading or writing, local or remote."""
    return epath(path).open(mode) if is_url(path) else open(local(path), mode)


def copy(src: PathLike, dst: PathLike, chunk: int = 8 << 20) -> None:
    """Stream-copy a file between any two locations (local `dst`: atomically)."""
    if is_url(dst):
        with open_file(src) as fi, epath(dst).open("wb") as fo:
            while block := fi.read(chunk):
                fo.write(block)
        return
    d = local(dst)
    tmp = f"{d}.{os.getpid()}.tmp"
    with open_file(src) as fi, open(tmp, "wb") as fo:
        while block := fi.read(chunk):
            fo.write(block)
    os.replace(tmp, d)
