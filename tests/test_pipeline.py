"""The training stream: deterministic across worker counts, resumes, close-mosaic, sharding and
bad data (small synthetic images written to tmp, 64 px input)."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from yolox_jax.config import variant_config
from yolox_jax.data import augment as A
from yolox_jax.data.pipeline import TrainLoader, epoch_permutation, sample_rng
from yolox_jax.data.transforms import resize_fit

SIZE = (64, 64)


def _records(folder, n=6):
    """n PNG images (48..88 px) with 1-3 bright rectangles each; dict records as the readers'."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        h, w = int(rng.integers(48, 89)), int(rng.integers(48, 89))
        img = np.full((h, w, 3), 40 + 10 * i, np.uint8)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            x1, y1 = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
            x2, y2 = x1 + int(rng.integers(8, 13)), y1 + int(rng.integers(8, 13))
            img[y1:y2, x1:x2] = 250
            boxes.append((x1, y1, x2, y2))
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), img)
        records.append(dict(image_path=str(path), height=h, width=w,
                            boxes=np.array(boxes, np.float64),
                            classes=np.arange(len(boxes), dtype=np.int64) % 3,
                            ignore=np.zeros(len(boxes), bool)))
    return records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _records(tmp_path_factory.mktemp("pipeline_images"))


def _cfg(name="yolox_s", **kw):
    c = variant_config(name).data
    c.input_size = SIZE
    for k, v in kw.items():
        c[k] = v
    return c


def _loader(records, cfg=None, batch=4, seed=3, no_aug=1, max_epoch=3, workers=0, **kw):
    return TrainLoader(records, cfg or _cfg(), batch, seed=seed, no_aug_epochs=no_aug,
                       max_epoch=max_epoch, num_workers=workers, process_index=kw.pop("pi", 0),
                       process_count=kw.pop("pc", 1), **kw)


def _run(loader, epochs, start=0):
    out = []
    for e in epochs:
        out += list(loader.epoch(e, start if e == epochs[0] else 0))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.epoch, x.batch_index) == (y.epoch, y.batch_index)
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)


def test_batches_shapes_and_epoch_length(records):
    with _loader(records) as loader:
        batches = _run(loader, [0])
    # ceil(6 / 4) = 2 full batches (the official len(train_loader)); the last wraps around.
    assert loader.iters_per_epoch == 2 and len(batches) == 2
    for b in batches:
        assert b.images.shape == (4, *SIZE, 3) and b.images.dtype == np.uint8
        assert b.labels.shape == (4, 120, 5) and b.labels.dtype == np.float32
        assert b.stats["samples"] == 4 and b.stats["mosaic"] == 4 and b.stats["mixup"] == 4
        valid = b.labels[..., 3] > 0
        assert valid.any() and (b.labels[..., 0][valid] < 3).all()
        # boxes inside the 64 x 64 input (affine and mixup clip them)
        cx, cy, w, h = (b.labels[..., i][valid] for i in range(1, 5))
        assert (cx - w / 2 >= -1e-3).all() and (cx + w / 2 <= 64 + 1e-3).all()
        assert (cy - h / 2 >= -1e-3).all() and (cy + h / 2 <= 64 + 1e-3).all()


def test_zero_and_two_workers_give_identical_batches(records):
    with _loader(records, max_epoch=2, workers=0) as loader:
        ref = _run(loader, [0, 1])
    with _loader(records, max_epoch=2, workers=2) as loader:
        got = _run(loader, [0, 1])
    _same(ref, got)
    assert [b.stats["mosaic"] for b in got] == [4, 4, 0, 0]  # epoch 1 is the no-aug epoch


def test_resume_from_saved_state_gives_the_same_next_batches(records):
    with _loader(records) as loader:
        ref = _run(loader, [0, 1, 2])
        state = json.loads(json.dumps(loader.state(1, 1)))  # after 3 batches, as checkpointed
    with _loader(records) as resumed:
        epoch, next_batch = resumed.restore(state)
        assert (epoch, next_batch) == (1, 1)
        _same(ref[3:], _run(resumed, [1, 2], start=next_batch))
        # A state at the end of an epoch resumes at the next one.
        assert resumed.restore(resumed.state(1, 2)) == (2, 0)
    for key, value in (("seed", 4), ("global_batch_size", 2)):
        with _loader(records) as other:
            bad = dict(state, **{key: value})
            with pytest.raises(ValueError, match=key):
                other.restore(bad)


def test_close_mosaic_by_the_samples_epoch(records):
    """Epochs >= max_epoch - no_aug_epochs: no mosaic / mixup; each row is then the plain
    TrainTransform of its record, drawn from that sample's own generator."""
    cfg = _cfg()
    with _loader(records, cfg, max_epoch=3, no_aug=1) as loader:
        batches = _run(loader, [1, 2])
    assert [b.stats["mosaic"] for b in batches] == [4, 4, 0, 0]
    assert [b.stats["mixup"] for b in batches] == [4, 4, 0, 0]
    perm = epoch_permutation(3, 2, len(records))
    for b in batches[2:]:
        for row in range(4):
            pos = b.batch_index * 4 + row
            rec = records[perm[pos % 6]]
            img, r = resize_fit(cv2.imread(rec["image_path"]), SIZE)
            ref, ref_labels, _ = A.train_transform(
                img, rec["boxes"] * r, rec["classes"], sample_rng(3, 2, int(perm[pos % 6]),
                                                                  pos // 6),
                SIZE, 120, cfg.flip_prob, cfg.hsv_prob)
            np.testing.assert_array_equal(b.images[row], ref)
            np.testing.assert_array_equal(b.labels[row], ref_labels)


def test_mixed_mosaic_batches(records):
    with _loader(records, _cfg("yolox_nano"), batch=6, max_epoch=4) as loader:  # mosaic_prob 0.5
        batches = _run(loader, [0, 1, 2])
    mosaic = sum(b.stats["mosaic"] for b in batches)
    assert 0 < mosaic < 18 and sum(b.stats["mixup"] for b in batches) == 0
    assert all(b.images.shape == (6, *SIZE, 3) for b in batches)


def test_process_shards_make_up_the_global_batch(records):
    with _loader(records) as full:
        ref = _run(full, [0])
    parts = []
    for pi in range(2):
        with _loader(records, pi=pi, pc=2) as loader:
            parts.append(_run(loader, [0]))
    for b, p0, p1 in zip(ref, *parts, strict=True):
        np.testing.assert_array_equal(b.images, np.concatenate([p0.images, p1.images]))
        np.testing.assert_array_equal(b.labels, np.concatenate([p0.labels, p1.labels]))
    with pytest.raises(ValueError, match="divisible"):
        _loader(records, batch=3, pc=2)


def test_bad_data_is_counted_not_fatal(tmp_path, caplog):
    records = _records(tmp_path, 4)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    many = np.array([[x, y, x + 4 + (x % 5), y + 4]
                     for x in range(0, 60, 4) for y in range(0, 40, 4)], np.float64)  # 150 boxes
    records += [
        dict(image_path=str(corrupt), height=10, width=10, boxes=np.array([[0, 0, 5, 5.0]]),
             classes=np.array([0]), ignore=np.array([False])),
        dict(image_path=str(tmp_path / "missing.png"), height=10, width=10,
             boxes=np.zeros((0, 4)), classes=np.zeros(0, np.int64), ignore=np.zeros(0, bool)),
        dict(image_path=records[0]["image_path"], height=records[0]["height"],
             width=records[0]["width"], boxes=np.zeros((0, 4)), classes=np.zeros(0, np.int64)),
        dict(image_path=records[1]["image_path"], height=64, width=64, boxes=many,
             classes=np.zeros(len(many), np.int64), ignore=np.zeros(len(many), bool)),
        dict(image_path=records[2]["image_path"], height=records[2]["height"],
             width=records[2]["width"],
             boxes=np.array([[-5, 3, 20, 20], [10, 10, 500, 30], [np.nan, 0, 3, 3], [1, 1, 9, 9]]),
             classes=np.array([0, 1, 2, 0]), ignore=np.array([False, False, False, True])),
    ]
    caplog.set_level(logging.INFO, logger="yolox_jax.data.pipeline")
    # One epoch in plain mode (no mosaic: the 150-box record keeps all its boxes), one with.
    with _loader(records, batch=3, max_epoch=2, no_aug=1) as loader:
        report = loader.records_report
        assert report["non_finite"] == 1 and report["ignored"] == 1
        assert report["outside_image"] == 2 and report["empty_images"] == 2
        assert report["boxes"] == sum(len(r["boxes"]) for r in records) - 2
        batches = _run(loader, [0, 1])
        aug, plain = loader.summary(0), loader.summary(1)
    assert all(np.isfinite(b.labels).all() for b in batches)
    for s in (aug, plain):
        assert s["samples"] == 9 and s["unreadable_records"] == [4, 5]
    # Record 4 -> 5 (also bad) -> 6, and record 5 -> 6: three unreadable loads replaced.
    assert plain["unreadable_loads"] == 3
    assert plain["capped"] == 1 and plain["boxes_dropped"] == 150 - 120
    assert plain["size_mismatch"] == 1  # the 150-box record says 64 x 64, its image is not
    assert any("3 loads of unreadable images replaced" in r.message for r in caplog.records)
    assert any("1 non-finite dropped" in r.message for r in caplog.records)


def test_bad_records_are_clear_errors(records):
    with pytest.raises(ValueError, match="at least one"):
        _loader([])
    bad = dict(records[0], classes=np.array([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="record 0 .*boxes, 5 classes"):
        _loader([bad])


def test_preview_draws_boxes_where_the_labels_are():
    from yolox_jax.data.preview import draw_labels, make_grid

    img = np.full((64, 64, 3), 114, np.uint8)
    labels = np.zeros((4, 5), np.float32)
    labels[0] = (2, 30, 20, 20, 10)  # x 20..40, y 15..25
    out = draw_labels(img, labels, ("a", "b", "c"))
    changed = (out != img).any(-1)
    ys, xs = np.nonzero(changed[13:])  # below the name text
    assert xs.min() == 20 and xs.max() == 40 and ys.max() + 13 == 25
    assert (img == 114).all()  # drawn on a copy
    grid = make_grid([out] * 5, gap=4)
    assert grid.shape == (2 * 68 + 4, 3 * 68 + 4, 3)
    np.testing.assert_array_equal(grid[4:68, 72:136], out)


def test_preview_cli_on_voc(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, need_shared

    voc = need_shared("data/voc_raccoon")
    out = tmp_path / "grid.png"
    cmd = [sys.executable, "-m", "yolox_jax.data.preview", "--config", "configs/yolox_nano.py",
           "--data-dir", str(voc), "--voc-split", "train", "--class-names", "raccoon",
           "--out", str(out), "--n", "4", "--tile", "96"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "4 samples" in res.stdout
    assert cv2.imread(str(out)).shape == (2 * 100 + 4, 2 * 100 + 4, 3)
