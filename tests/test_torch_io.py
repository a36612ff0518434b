"""The torch-free `.pth` reader/writer: safe against malicious pickles, clear on bad files, and
bit-exact on a round trip."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.weights.torch_io import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    CheckpointError,
    extract_state_dict,
    load_torch_file,
    save_torch_file,
)


def _payload_pickle(sentinel: Path) -> bytes:
    """A pickle that, if unpickled by `pickle.load`, creates `sentinel` via os.system."""

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {sentinel}",))

    return pickle.dumps({"model": Evil()}, protocol=2)


def _write_zip_checkpoint(path: Path, data_pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")


def _write_legacy_checkpoint(path: Path, data_pkl: bytes) -> None:
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL,
                                                     "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(data_pkl)
        pickle.dump([], f, protocol=2)


def test_sanity_the_payload_does_run_under_plain_pickle(tmp_path):
    """Proves the crafted payload is live: plain pickle runs it (so its absence below means
    the restricted unpickler refused it, not that the payload was harmless)."""
    sentinel = tmp_path / "ran"
    pickle.loads(_payload_pickle(sentinel))
    assert sentinel.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path, layout):
    sentinel = tmp_path / "pwned"
    path = tmp_path / f"evil_{layout}.pth"
    writer = _write_zip_checkpoint if layout == "zip" else _write_legacy_checkpoint
    writer(path, _payload_pickle(sentinel))
    with pytest.raises(CheckpointError) as e:
        load_torch_file(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "'posix.system'" in msg or "'os.system'" in msg
    assert "nothing was run" in msg
    assert not sentinel.exists()


def test_builtins_eval_global_is_named(tmp_path):
    # GLOBAL 'builtins eval' + REDUCE, hand-written
    pkl = b"\x80\x02cbuiltins\neval\nX\x06\x00\x00\x00print()\x85R."
    path = tmp_path / "eval.pth"
    _write_zip_checkpoint(path, pkl)
    with pytest.raises(CheckpointError, match=r"'builtins\.eval'"):
        load_torch_file(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(64), "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG"),
        (b"model: yolox_s\nthis is text\n", "text"),
        (b"\x80\x02}q\x00.", "no torch magic"),
    ],
    ids=["empty", "jpeg", "png", "text", "plain-pickle"],
)
def test_files_that_are_not_checkpoints(tmp_path, content, expected):
    path = tmp_path / "not_a_checkpoint.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as e:
        load_torch_file(path)
    assert str(path) in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_torch_file(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="directory"):
        load_torch_file(tmp_path)


def _small_state_dict() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn.running_var": rng.random(4).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "half": rng.standard_normal((2, 5)).astype(np.float16),
        "f64": rng.standard_normal(3),
        "empty": np.zeros((0, 4), np.float32),
    }


@pytest.mark.parametrize("cut", [0.5, 0.98])
def test_truncated_zip_checkpoint(tmp_path, cut):
    path = tmp_path / "full.pth"
    save_torch_file({"model": _small_state_dict()}, path)
    blob = path.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(blob[: int(len(blob) * cut)])
    with pytest.raises(CheckpointError) as e:
        load_torch_file(bad)
    assert str(bad) in str(e.value)


def test_truncated_legacy_checkpoint(tmp_path):
    legacy = need_shared("data/weights/yolox_nano_legacy_format.pth")
    bad = tmp_path / "legacy_truncated.pth"
    blob = legacy.read_bytes()
    bad.write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_torch_file(bad)
    assert str(bad) in str(e.value)


def test_round_trip_is_bit_exact(tmp_path):
    sd = _small_state_dict()
    path = tmp_path / "rt.pth"
    save_torch_file({"model": sd, "start_epoch": 3, "meta": [1.5, None, "s", True]}, path)
    obj = load_torch_file(path)
    assert obj["start_epoch"] == 3 and obj["meta"] == [1.5, None, "s", True]
    back = extract_state_dict(obj)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].tobytes() == v.tobytes(), k


def test_written_file_layout_is_torchs(tmp_path):
    """Records 64-byte aligned, `version` and `byteorder` present, as torch.save writes."""
    path = tmp_path / "layout.pth"
    save_torch_file({"model": _small_state_dict()}, path)
    blob = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert {"layout/data.pkl", "layout/version", "layout/byteorder"} <= set(names)
        for info in zf.infolist():
            name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26:
                                                            info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_extract_state_dict_layouts():
    t = {"module.a.weight": np.zeros(2, np.float32)}
    assert list(extract_state_dict(t)) == ["a.weight"]
    assert list(extract_state_dict({"model": t, "start_epoch": 1})) == ["a.weight"]
    with pytest.raises(CheckpointError, match="no tensors"):
        extract_state_dict({"epoch": 3}, "x.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        extract_state_dict([1, 2], "x.pth")


def test_real_checkpoint_layouts_agree():
    zip_sd = extract_state_dict(load_torch_file(need_shared("data/weights/yolox_nano.pth")))
    legacy = extract_state_dict(
        load_torch_file(need_shared("data/weights/yolox_nano_legacy_format.pth"))
    )
    fp16 = load_torch_file(need_shared("data/weights/yolox_nano_fp16_module_prefix.pth"))
    fp16_sd = extract_state_dict(fp16)
    assert len(zip_sd) == 642 and list(zip_sd) == list(legacy) == list(fp16_sd)
    for k, v in zip_sd.items():
        assert legacy[k].tobytes() == v.tobytes(), k
        if v.dtype == np.float32:
            assert fp16_sd[k].dtype == np.float16
            np.testing.assert_array_equal(fp16_sd[k], v.astype(np.float16))


def test_torch_loads_what_we_write(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (optional comparison)")
    sd = _small_state_dict()
    path = tmp_path / "for_torch.pth"
    save_torch_file({"model": sd}, path)
    loaded = torch.load(path, weights_only=True)
    for k, v in sd.items():
        np.testing.assert_array_equal(loaded["model"][k].numpy(), v)
    buf = io.BytesIO()
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, buf)
    (tmp_path / "by_torch.pth").write_bytes(buf.getvalue())
    back = extract_state_dict(load_torch_file(tmp_path / "by_torch.pth"))
    for k, v in sd.items():
        assert back[k].tobytes() == v.tobytes()
