"""Read and write PyTorch `.pth` checkpoints without torch and without running pickled code.

A `.pth` is a pickle. Unpickling it with `pickle.load` (or `torch.load(weights_only=False)`)
can run arbitrary code, so it is never done here: `_RestrictedUnpickler.find_class` resolves
only the handful of globals a checkpoint of tensors needs (tensor rebuild functions, storage
types, `OrderedDict`) to local stand-ins, and refuses everything else by name. Tensors come
back as NumPy arrays (fp16 stays fp16; the converter casts).

Both on-disk layouts torch has used are read:

* the zip format (torch >= 1.6): `<name>/data.pkl` + one raw record per storage
  `<name>/data/<key>`;
* the legacy format (torch < 1.6, `_use_new_zipfile_serialization=False`): a magic number, a
  protocol and a sys-info pickle, the object pickle, the list of storage keys, then each storage
  as an int64 element count followed by its raw bytes.

`save_torch_file` writes the zip format (64-byte aligned records, as torch writes them) so that
`torch.load(path, weights_only=True)` and the official `tools/` load it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CheckpointError",
    "extract_state_dict",
    "load_torch_file",
    "save_torch_file",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> NumPy dtype (little endian, as every checkpoint we read).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # raw bits, widened to float32 on read
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_DTYPE_STORAGES = {v: k for k, v in _STORAGE_DTYPES.items() if k != "BFloat16Storage"}


class CheckpointError(ValueError):
    """A file that is not a readable, safe checkpoint of tensors; the message names the file."""


class _StorageType:
    """Stand-in for `torch.FloatStorage` etc. inside the pickle (only its name is used)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage's bytes, as a flat NumPy array of its dtype."""

    def __init__(self, data: np.ndarray, bfloat16: bool = False) -> None:
        self.data = data
        self.bfloat16 = bfloat16


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, *_unused: Any
) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2` without torch: a strided view of the storage, copied."""
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    data = storage.data
    if not size:
        arr = data[offset : offset + 1].reshape(())
    else:
        needed = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        if min(size) > 0 and needed > data.size:
            raise _Truncated(
                f"a tensor of size {size} at offset {offset} needs {needed} elements, "
                f"its storage holds {data.size}"
            )
        item = data.itemsize
        arr = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=tuple(s * item for s in stride)
        ) if min(size) > 0 else np.zeros(size, data.dtype)
    arr = np.array(arr, copy=True)
    if storage.bfloat16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _rebuild_parameter(data: np.ndarray, *_unused: Any) -> np.ndarray:
    """`torch._utils._rebuild_parameter`: a Parameter is its tensor here."""
    return data


class _Truncated(Exception):
    pass


# (module, name) -> the local object the pickle may reference. Nothing else is reachable.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_SAFE_GLOBALS`; storages come from `load_storage(key, type, numel)`."""

    def __init__(self, file: io.BufferedIOBase, source: str, load_storage) -> None:
        super().__init__(file)
        self.source = source
        self.load_storage = load_storage
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.source}: refusing to load: the pickle asks for the global "
                f"'{module}.{name}', which is not part of a checkpoint of tensors (only tensor "
                "rebuild functions, storage types and OrderedDict are allowed; nothing was run)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r} in the pickle")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.source}: storage of unknown type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = self.load_storage(key, storage_type, numel)
        return self.storages[key]


def _check_readable(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file (expected a PyTorch .pth checkpoint)")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a PyTorch .pth file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (expected a PyTorch .pth checkpoint)")
    with open(path, "rb") as f:
        return f.read(16)


def _describe_non_checkpoint(head: bytes) -> str:
    kinds = {
        b"\xff\xd8\xff": "a JPEG image",
        b"\x89PNG": "a PNG image",
        b"GIF8": "a GIF image",
        b"%PDF": "a PDF document",
        b"\x1f\x8b": "a gzip archive",
        b"\x08": "probably an ONNX model",
    }
    for magic, what in kinds.items():
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "not a zip archive or a pickle"


def _load_zip(path: Path) -> Any:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(
            f"{path}: a damaged or truncated zip-format checkpoint ({e})"
        ) from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(
                f"{path}: a zip archive without '<name>/data.pkl': not a PyTorch checkpoint"
            )
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")

        def load_storage(key: str, st: _StorageType, numel: int) -> _Storage:
            name = f"{prefix}data/{key}"
            try:
                raw = zf.read(name)
            except KeyError:
                raise CheckpointError(f"{path}: storage record '{name}' is missing") from None
            dt = st.dtype
            if len(raw) < numel * dt.itemsize:
                raise CheckpointError(
                    f"{path}: storage '{name}' has {len(raw)} bytes, expected "
                    f"{numel * dt.itemsize} ({numel} x {st.name}): the file is truncated"
                )
            data = np.frombuffer(raw, dtype=dt, count=numel)
            return _Storage(data, bfloat16=st.name == "BFloat16Storage")

        try:
            with zf.open(pkl[0]) as f:
                return _RestrictedUnpickler(
                    io.BufferedReader(f), str(path), load_storage
                ).load()
        except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})") from None


def _load_legacy(path: Path) -> Any:
    """torch < 1.6 layout. The storages follow the object pickle, so it is read twice: once to
    learn the storage types and sizes (tensors rebuilt on empty placeholders, then discarded),
    once more with the bytes in place."""
    with open(path, "rb") as f:
        blob = f.read()
    src = str(path)

    def refuse_storage(*_a: Any) -> _Storage:
        raise CheckpointError(f"{path}: storage reference outside the object pickle")

    buf = io.BytesIO(blob)
    try:
        magic = _RestrictedUnpickler(buf, src, refuse_storage).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a torch pickle"
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a torch pickle: "
            f"{type(e).__name__}: {e})"
        ) from None
    if magic != LEGACY_MAGIC:
        raise CheckpointError(
            f"{path}: a pickle that is not a torch.save checkpoint (no torch magic number)"
        )
    try:
        protocol = _RestrictedUnpickler(buf, src, refuse_storage).load()
        if protocol != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {protocol!r}")
        _RestrictedUnpickler(buf, src, refuse_storage).load()  # sys info (endianness, sizes)
        obj_start = buf.tell()
        types: dict[str, _StorageType] = {}

        def placeholder(key: str, st: _StorageType, numel: int) -> _Storage:
            types[key] = st
            return _Storage(np.zeros(max(numel, 0), st.dtype))

        _RestrictedUnpickler(buf, src, placeholder).load()
        keys = _RestrictedUnpickler(buf, src, refuse_storage).load()
        storages: dict[str, _Storage] = {}
        for key in keys:
            key = str(key)
            if key not in types:
                raise CheckpointError(f"{path}: storage {key!r} is not referenced by any tensor")
            (count,) = struct.unpack("<q", buf.read(8))
            st = types[key]
            nbytes = count * st.dtype.itemsize
            raw = buf.read(nbytes)
            if len(raw) != nbytes:
                raise CheckpointError(
                    f"{path}: storage {key!r} needs {nbytes} bytes, the file ends after "
                    f"{len(raw)}: the file is truncated"
                )
            storages[key] = _Storage(
                np.frombuffer(raw, dtype=st.dtype), bfloat16=st.name == "BFloat16Storage"
            )
        missing = sorted(set(types) - set(storages))
        if missing:
            raise CheckpointError(f"{path}: storages {missing[:5]} are missing: truncated file")
        buf.seek(obj_start)
        return _RestrictedUnpickler(buf, src, lambda key, st, n: storages[key]).load()
    except CheckpointError:
        raise
    except _Truncated:
        raise
    except (struct.error, EOFError, pickle.UnpicklingError, ValueError, IndexError) as e:
        raise CheckpointError(
            f"{path}: damaged or truncated legacy checkpoint ({type(e).__name__}: {e})"
        ) from None


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a `.pth` (zip or legacy format) with tensors as NumPy arrays; runs no pickled code.

    Raises `CheckpointError` naming the file for anything that is not a checkpoint of tensors: a
    missing, empty, truncated or damaged file, an image or text, or a pickle asking for a global
    outside the allow-list (the message names it).
    """
    path = Path(path)
    head = _check_readable(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        if head[:1] != b"\x80":
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint ({_describe_non_checkpoint(head)}; expected "
                "a torch.save file: a zip archive or a pickle)"
            )
        return _load_legacy(path)
    except _Truncated as e:
        raise CheckpointError(f"{path}: the file is truncated or damaged ({e})") from None


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The model state dict of a loaded checkpoint: `{'model': sd, ...}`, `{'state_dict': sd}`,
    or a bare state dict; a `module.` prefix (DataParallel / DDP) is removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a dict of tensors or a dict with a 'model' entry, "
            f"got {type(obj).__name__}"
        )
    sd: Any = obj
    for key in ("model", "state_dict", "ema", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
    if not tensors:
        found = ", ".join(sorted(map(str, obj.keys()))[:10])
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {found})")
    others = [k for k, v in sd.items() if not isinstance(v, np.ndarray)]
    if others:
        raise CheckpointError(
            f"{source}: the state dict holds non-tensor entries: {', '.join(map(str, others[:5]))}"
        )
    if all(str(k).startswith("module.") for k in tensors):
        tensors = {str(k)[len("module."):]: v for k, v in tensors.items()}
    return {str(k): v for k, v in tensors.items()}


# ------------------------------------------------------------------------------------- writing
class _TensorRef:
    """An array to be written as a tensor with storage record `key`."""

    def __init__(self, key: str, array: np.ndarray) -> None:
        self.key, self.array = key, array


def _dump_pickle(obj: Any) -> bytes:
    """Protocol-2 pickle of `obj` (dicts, lists, scalars, `_TensorRef`s) in torch's layout."""
    out = io.BytesIO()
    _Emitter(out).emit(obj)
    return out.getvalue()


class _Emitter:
    """A tiny pickle writer for the few opcodes a state dict needs (protocol 2, no memo reuse
    across unrelated objects), so no Python object of ours ever lands in the file."""

    def __init__(self, out: io.BytesIO) -> None:
        self.out = out

    def w(self, b: bytes) -> None:
        self.out.write(b)

    def emit(self, obj: Any) -> None:
        self.w(b"\x80\x02")
        self.value(obj)
        self.w(b".")

    def glob(self, module: str, name: str) -> None:
        self.w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def value(self, obj: Any) -> None:
        if obj is None:
            self.w(b"N")
        elif obj is True:
            self.w(b"\x88")
        elif obj is False:
            self.w(b"\x89")
        elif isinstance(obj, int):
            self.w(b"\x8a" + _long_bytes(obj))
        elif isinstance(obj, float):
            self.w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            self.w(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(obj, tuple):
            self.w(b"(")
            for v in obj:
                self.value(v)
            self.w(b"t")
        elif isinstance(obj, list):
            self.w(b"]")
            if obj:
                self.w(b"(")
                for v in obj:
                    self.value(v)
                self.w(b"e")
        elif isinstance(obj, _TensorRef):
            self.tensor(obj)
        elif isinstance(obj, Mapping):
            if isinstance(obj, collections.OrderedDict):
                self.glob("collections", "OrderedDict")
                self.w(b")R")  # OrderedDict()
            else:
                self.w(b"}")
            if obj:
                self.w(b"(")
                for k, v in obj.items():
                    self.value(k)
                    self.value(v)
                self.w(b"u")
        else:
            raise TypeError(f"save_torch_file: cannot write a value of type {type(obj).__name__}")

    def tensor(self, t: _TensorRef) -> None:
        arr = t.array
        storage_name = _DTYPE_STORAGES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">"
                                           else arr.dtype)
        if storage_name is None:
            raise TypeError(f"save_torch_file: unsupported tensor dtype {arr.dtype}")
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.w(b"(")
        # persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel)
        self.w(b"(")
        self.value("storage")
        self.glob("torch", storage_name)
        self.value(t.key)
        self.value("cpu")
        self.value(int(arr.size))
        self.w(b"tQ")
        self.value(0)  # storage offset
        self.value(tuple(int(s) for s in arr.shape))
        strides = []
        acc = 1
        for n in reversed(arr.shape):
            strides.append(acc)
            acc *= int(n)
        self.value(tuple(reversed(strides)))
        self.value(False)  # requires_grad
        self.value(collections.OrderedDict())  # backward hooks
        self.w(b"tR")


def _long_bytes(n: int) -> bytes:
    if n == 0:
        return b"\x00"
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return bytes([len(data)]) + data


def _wrap_tensors(obj: Any, counter: list[int]) -> Any:
    if isinstance(obj, np.ndarray):
        key = str(counter[0])
        counter[0] += 1
        return _TensorRef(key, np.array(obj, order="C", copy=True))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _wrap_tensors(v, counter)) for k, v in obj.items())
    if isinstance(obj, Mapping):
        return {k: _wrap_tensors(v, counter) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_wrap_tensors(v, counter) for v in obj)
    return obj


def _collect(obj: Any, out: list[_TensorRef]) -> None:
    if isinstance(obj, _TensorRef):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            _collect(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect(v, out)


def _aligned_zipinfo(name: str, offset: int, alignment: int = 64) -> zipfile.ZipInfo:
    """A stored entry whose data starts on an `alignment` boundary (torch pads with an 'FB' extra
    field so that storages can be memory-mapped)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode())
    pad = (-(offset + header + 4)) % alignment
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


def save_torch_file(obj: Any, path: str | os.PathLike, archive_name: str | None = None) -> None:
    """Write `obj` (nested dicts/lists of NumPy arrays and scalars) as a torch zip-format `.pth`.

    The result loads with `torch.load(path, weights_only=True)` (arrays become tensors of the
    same dtype and shape) and with `load_torch_file`. Written to a temporary file and renamed, so
    an interrupted save never leaves a half-written checkpoint at `path`.
    """
    path = Path(path)
    archive = archive_name or path.stem or "archive"
    wrapped = _wrap_tensors(obj, [0])
    tensors: list[_TensorRef] = []
    _collect(wrapped, tensors)
    pkl = _dump_pickle(wrapped)
    records: list[tuple[str, bytes]] = [
        (f"{archive}/data.pkl", pkl),
        (f"{archive}/.format_version", b"1"),
        (f"{archive}/.storage_alignment", b"64"),
        (f"{archive}/byteorder", b"little"),
    ]
    for t in tensors:
        records.append((f"{archive}/data/{t.key}", t.array.astype(t.array.dtype.newbyteorder("<"),
                                                                 copy=False).tobytes()))
    records.append((f"{archive}/version", b"3\n"))
    records.append((f"{archive}/.data/serialization_id", b"0" * 40))
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in records:
                zf.writestr(_aligned_zipinfo(name, f.tell()), data)
    os.replace(tmp, path)
