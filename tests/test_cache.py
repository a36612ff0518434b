"""The image cache: entries equal a fresh decode, and stale or corrupt entries are rebuilt."""

from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
import pytest

from yolox_jax.data.cache import MANIFEST, ImageStore, UnreadableImageError, load_resized
from yolox_jax.data.transforms import resize_fit

SIZE = (64, 64)


def _write_images(folder, n=3):
    paths = []
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 256, (40 + 8 * i, 96, 3), dtype=np.uint8)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), img)
        paths.append(str(path))
    return paths


def _entry_file(store: ImageStore, path: str):
    return store.root / store.entries[os.path.abspath(path)]["file"]


def test_disk_cache_equals_decode_and_is_reused(tmp_path):
    paths = _write_images(tmp_path)
    store = ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    assert store.build_report == {"reused": 0, "rebuilt": 3, "unreadable": 0}
    for i, p in enumerate(paths):
        img, hw, repaired = store.load(i)
        ref, _ = resize_fit(cv2.imread(p), SIZE)  # official load_resized_img
        np.testing.assert_array_equal(img, ref)
        assert hw == cv2.imread(p).shape[:2] and not repaired
    again = ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    assert again.build_report["reused"] == 3 and again.build_report["rebuilt"] == 0
    # Another input size is another cache.
    other = ImageStore(paths, (32, 32), "disk", tmp_path / "cache")
    assert other.build_report["rebuilt"] == 3 and other.load(0)[0].shape[1] == 32


def test_stale_entry_is_rebuilt_when_source_changes(tmp_path):
    paths = _write_images(tmp_path)
    ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    new = np.full((30, 50, 3), 77, np.uint8)
    cv2.imwrite(paths[1], new)
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime
    store = ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    assert store.build_report == {"reused": 2, "rebuilt": 1, "unreadable": 0}
    img, hw, repaired = store.load(1)
    assert hw == (30, 50) and not repaired
    np.testing.assert_array_equal(img, resize_fit(new, SIZE)[0])


def test_corrupt_entry_is_repaired_not_trusted(tmp_path):
    paths = _write_images(tmp_path)
    store = ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    f = _entry_file(store, paths[0])
    raw = bytearray(f.read_bytes())
    raw[-100] ^= 0xFF  # bit rot in the pixels: same size, so only the CRC can tell
    f.write_bytes(bytes(raw))
    img, _, repaired = store.load(0)
    assert repaired
    np.testing.assert_array_equal(img, load_resized(paths[0], SIZE)[0])
    assert store.load(0)[2] is False  # rewritten: the next load trusts it again


def test_truncated_entry_and_bad_manifest_are_rebuilt(tmp_path):
    paths = _write_images(tmp_path)
    store = ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    f = _entry_file(store, paths[2])
    f.write_bytes(f.read_bytes()[:200])  # a partial write
    rebuilt = ImageStore(paths, SIZE, "disk", tmp_path / "cache")
    assert rebuilt.build_report["rebuilt"] == 1
    np.testing.assert_array_equal(rebuilt.load(2)[0], load_resized(paths[2], SIZE)[0])
    # Even if the build missed it (file truncated after the build), a load never returns junk.
    f.write_bytes(f.read_bytes()[:200])
    img, _, repaired = rebuilt.load(2)
    assert repaired
    np.testing.assert_array_equal(img, load_resized(paths[2], SIZE)[0])
    (store.root / MANIFEST).write_text("{not json")
    assert ImageStore(paths, SIZE, "disk", tmp_path / "cache").build_report["rebuilt"] == 3
    (store.root / MANIFEST).write_text(json.dumps({"version": 99}))
    assert ImageStore(paths, SIZE, "disk", tmp_path / "cache").build_report["rebuilt"] == 3


def test_unreadable_and_missing_sources(tmp_path):
    paths = _write_images(tmp_path, 2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    missing = str(tmp_path / "missing.jpg")
    for mode in ("", "disk"):
        store = ImageStore(paths + [str(bad), missing], SIZE, mode, tmp_path / "cache")
        if mode:
            assert store.build_report["unreadable"] == 2
        with pytest.raises(UnreadableImageError, match="bad.jpg"):
            store.load(2)
        with pytest.raises(UnreadableImageError, match="missing.jpg"):
            store.load(3)
        assert store.load(0)[0].shape[1] == 64
    # A fixed file is picked up again (its size/mtime changed).
    cv2.imwrite(str(bad).replace(".jpg", ".png"), np.zeros((8, 8, 3), np.uint8))
    os.replace(str(bad).replace(".jpg", ".png"), bad)
    store = ImageStore(paths + [str(bad)], SIZE, "disk", tmp_path / "cache")
    assert store.load(2)[1] == (8, 8)


def test_ram_cache_lives_in_shm_and_copies_never_delete_it(tmp_path):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    paths = _write_images(tmp_path, 2)
    store = ImageStore(paths, SIZE, "ram")
    if store.mode != "ram":
        pytest.skip("/dev/shm has no room")
    root = store.root
    assert str(root).startswith("/dev/shm") and root.is_dir()
    copy = pickle.loads(pickle.dumps(store))  # what a grain worker gets
    np.testing.assert_array_equal(copy.load(1)[0], load_resized(paths[1], SIZE)[0])
    copy.close()
    assert root.is_dir()
    store.close()
    assert not root.exists()


def test_bad_mode_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data.cache must be one of"):
        ImageStore([], SIZE, "gpu")
