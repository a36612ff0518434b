"""Packed ArrayRecord shard sets: pack -> read round trips on the shared COCO subset and raccoon
data, bit-identical training batches from folder and shards, a fake remote (an in-memory
`s3://` file system behind etils.epath) taking the same code path, resume across worker-count,
process-count and source changes, and one clear message per kind of corrupt set."""

from __future__ import annotations

import json
import logging
import os
import struct

import cv2
import fsspec
import numpy as np
import pytest
from conftest import need_shared
from fsspec.implementations.memory import MemoryFileSystem

from yolox_jax.config import variant_config
from yolox_jax.data import pack, paths, shards
from yolox_jax.data.io import decode_image, read_image
from yolox_jax.data.pipeline import TrainLoader
from yolox_jax.data.readers import DatasetInfo, ImageRecord, ReadWarnings, read_coco, read_voc

SIZE = (96, 96)
COCO_ANN = "annotations/instances_val2017_subset.json"


def _coco():
    return read_coco(need_shared("data/coco_subset"), COCO_ANN)


def _subset(info: DatasetInfo, n: int) -> DatasetInfo:
    return DatasetInfo(info.records[:n], info.class_names, info.category_ids, info.format,
                       info.source, info.warnings, dict(info.stats, images=n))


@pytest.fixture(scope="module")
def coco_small(tmp_path_factory):
    """The first 24 COCO-subset images: folder DatasetInfo and its shard set (2 shards)."""
    info = _subset(_coco(), 24)
    out = str(tmp_path_factory.mktemp("shards") / "coco24")
    pack.pack_dataset(info, out, name="val", num_shards=2, progress=False)
    return info, out


def _synthetic(folder, n=8) -> DatasetInfo:
    """n small PNGs with 1-3 boxes each, as a DatasetInfo (no shared data needed)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        h, w = int(rng.integers(40, 70)), int(rng.integers(40, 70))
        img = np.full((h, w, 3), 30 + 20 * i, np.uint8)
        k = int(rng.integers(1, 4))
        xy = rng.integers(0, 25, (k, 2))
        boxes = np.concatenate([xy, xy + rng.integers(6, 14, (k, 2))], 1).astype(np.float64)
        for x1, y1, x2, y2 in boxes.astype(int):
            img[y1:y2, x1:x2] = 240
        path = folder / f"im{i}.png"
        cv2.imwrite(str(path), img)
        records.append(ImageRecord(str(path), f"im{i}", h, w, boxes, np.arange(k) % 3,
                                   np.zeros(k, bool), np.zeros(k, bool)))
    return DatasetInfo(records, ("a", "b", "c"), (0, 1, 2), "voc", str(folder), ReadWarnings(),
                       {"images": n})


def _cfg(**kw):
    c = variant_config("yolox_s").data  # mosaic 1.0, mixup 1.0
    c.input_size = SIZE
    c.update(kw)
    return c


def _loader(info, images=None, workers=0, batch=8, pi=0, pc=1, **kw):
    return TrainLoader(info.records, _cfg(**kw), batch, seed=5, no_aug_epochs=1, max_epoch=2,
                       num_workers=workers, process_index=pi, process_count=pc, images=images)


def _same_batches(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert (x.epoch, x.batch_index) == (y.epoch, y.batch_index)
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)


def _same_records(got: DatasetInfo, want: DatasetInfo):
    assert len(got.records) == len(want.records)
    assert got.class_names == want.class_names and got.category_ids == want.category_ids
    assert got.format == want.format
    for g, w in zip(got.records, want.records, strict=True):
        assert g.image_id == w.image_id and (g.height, g.width) == (w.height, w.width)
        assert g.image_path == os.path.basename(w.image_path)
        for f in ("boxes", "classes", "ignore", "difficult"):
            a, b = getattr(g, f), getattr(w, f)
            assert a.dtype == b.dtype and a.shape == b.shape, f
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dataset", ["coco_subset", "voc_raccoon"])
def test_pack_read_round_trip_and_pixels(dataset, tmp_path):
    """Same records and boxes after pack -> open, every record verified, and every decoded
    record the pixels cv2.imread gives for its file (the raccoon set has 3 gray JPEGs)."""
    if dataset == "coco_subset":
        info = _coco()
    else:
        info = read_voc(need_shared("data/voc_raccoon"), "trainval", ["raccoon"])
    out = tmp_path / dataset
    index = pack.pack_dataset(info, str(out), name="x", shard_mb=8, progress=False)
    assert len(index["shards"]) >= 2  # ~29 / ~14 MB in 8 MB shards: record lookup over shards
    got = shards.open_shards(out)
    _same_records(got, info)
    assert got.warnings.counts == info.warnings.counts and got.stats == info.stats
    assert shards.verify_shards(str(out)) == {"records": len(info.records),
                                              "shards": len(index["shards"])}
    for i, rec in enumerate(info.records):
        np.testing.assert_array_equal(got.images.read(i), cv2.imread(rec.image_path))
    stored = sum(s["bytes"] for s in index["shards"])
    files = sum(os.path.getsize(r.image_path) for r in info.records)
    assert files <= stored < 1.1 * files + 2**20  # the bytes as stored, little overhead
    if info.format == "coco":  # the json travels with the set, for pycocotools
        assert got.source == str(out / "instances_val2017_subset.json")
        assert json.loads(open(got.source).read()) == json.loads(open(info.source).read())


def test_pack_cli_and_pre_resize(tmp_path, capsys):
    voc = need_shared("data/voc_raccoon")
    out = tmp_path / "raccoon_128"
    argv = ["voc", str(voc), "--split", "test", "--class-names", "raccoon", "--out", str(out),
            "--resize", "128", "--no-progress", "--verify"]
    assert pack.main(argv) == 0
    assert "40 records, 44 boxes" in capsys.readouterr().out
    assert pack.main(argv) == 2  # refuses to overwrite a set
    assert "already holds a shard set" in capsys.readouterr().err
    info = read_voc(voc, "test", ["raccoon"])
    got = shards.open_shards(out)
    assert got.images.index["resize"] == [128, 128]
    for i, (g, w) in enumerate(zip(got.records, info.records, strict=True)):
        r = min(128 / w.height, 128 / w.width)
        assert r < 1  # every raccoon image is larger than 128
        img = got.images.read(i)
        assert img.shape[:2] == (g.height, g.width) == (int(w.height * r), int(w.width * r))
        np.testing.assert_allclose(g.boxes, w.boxes * r, rtol=1e-12)
    from yolox_jax.eval.evaluator import _image_items

    with pytest.raises(ValueError, match="packed with --resize .*pack the validation split"):
        _image_items(got, [0])
    assert pack.main(["verify", str(out)]) == 0
    assert pack.main(["verify", str(tmp_path / "nothing")]) == 2
    assert "is not a shard set" in capsys.readouterr().err


# ---------------------------------------------------------------- training from shards
def test_folder_and_shards_identical_batches_and_resume_across_workers(coco_small):
    """Folder (in-process) vs shards (2 worker processes) for a seed: the same batches bit for
    bit; a restart from the checkpointed state with 1 worker continues exactly."""
    info, loc = coco_small
    sh = shards.open_shards(loc)
    with _loader(info) as folder:
        ref = list(folder.epoch(0)) + list(folder.epoch(1))  # 3 mosaic+mixup, 3 plain batches
    assert [b.stats["mosaic"] for b in ref] == [8, 8, 8, 0, 0, 0]
    with _loader(sh, sh.images, workers=2) as two:
        first = []
        for b in two.epoch(0):
            first.append(b)
            if len(first) == 2:
                break
        state = json.loads(json.dumps(two.state(0, 2)))
    _same_batches(ref[:2], first)
    # a few integers (and the record-list fingerprint), nothing per file
    assert set(state) == {"version", "epoch", "next_batch", "seed", "global_batch_size",
                          "num_records", "iters_per_epoch", "fingerprint"}
    assert len(json.dumps(state)) < 250
    with _loader(sh, sh.images, workers=1) as one:
        epoch, nb = one.restore(state)
        rest = list(one.epoch(epoch, nb)) + list(one.epoch(1))
    _same_batches(ref[2:], rest)


def test_resume_switching_source_and_process_count(coco_small):
    """A folder run's state resumes on shards, and on 2 processes whose rows make up the
    global batch (the state is global: epoch and next batch)."""
    info, loc = coco_small
    sh = shards.open_shards(loc)
    with _loader(info) as folder:
        ref = list(folder.epoch(0))
        state = folder.state(0, 1)
    with _loader(sh, sh.images) as resumed:
        assert resumed.fingerprint == folder.fingerprint
        _same_batches(ref[1:], list(resumed.epoch(*resumed.restore(state))))
    parts = []
    for pi in range(2):
        with _loader(sh, sh.images, pi=pi, pc=2) as part:
            parts.append(list(part.epoch(*part.restore(state))))
    for b, p0, p1 in zip(ref[1:], *parts, strict=True):
        np.testing.assert_array_equal(b.images, np.concatenate([p0.images, p1.images]))
        np.testing.assert_array_equal(b.labels, np.concatenate([p0.labels, p1.labels]))


# --------------------------------------------------------------------------- fake remote
class FakeS3(MemoryFileSystem):
    """An in-memory object store answering s3:// URLs (etils.epath's fsspec backend)."""

    protocol = ("s3", "s3a")
    store: dict = {}
    pseudo_dirs = [""]


@pytest.fixture
def fake_s3():
    fsspec.register_implementation("s3", FakeS3, clobber=True)
    FakeS3.store.clear()
    yield "s3://fake-bucket"
    FakeS3.store.clear()


def test_remote_set_takes_the_same_code_path(fake_s3, tmp_path):
    """Annotations, images and shards on a (fake) remote store: read through epath, packed to
    it, copied once to the local dir (checked against the index), then identical to local;
    `file://` URLs read as local paths."""
    (tmp_path / "imgs").mkdir()
    folder = _synthetic(tmp_path / "imgs", 8)
    # the COCO-style json and the images on the remote store
    images = [{"id": i, "file_name": f"im{i}.png", "height": r.height, "width": r.width}
              for i, r in enumerate(folder.records)]
    anns = [{"id": 10 * i + k, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
             "area": float((b[2] - b[0]) * (b[3] - b[1]))}
            for i, r in enumerate(folder.records) for k, (b, c) in
            enumerate(zip(r.boxes, r.classes, strict=True))]
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c + 1, "name": n} for c, n in enumerate("abc")]}
    remote = f"{fake_s3}/coco"
    paths.makedirs(f"{remote}/annotations")
    paths.write_bytes(f"{remote}/annotations/instances_val2017.json", json.dumps(gt).encode())
    for r in folder.records:
        paths.copy(r.image_path, f"{remote}/val2017/{os.path.basename(r.image_path)}")
    info = read_coco(remote, "instances_val2017.json")
    assert info.records[3].image_path == f"{remote}/val2017/im3.png"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    local_info = read_coco(tmp_path / "gt.json", tmp_path / "imgs")
    for a, b in zip(info.records, local_info.records, strict=True):
        assert a.image_id == b.image_id
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(read_image(a.image_path), cv2.imread(b.image_path))

    pack.pack_dataset(info, f"{fake_s3}/shards/val", progress=False)
    assert paths.isfile(f"{fake_s3}/shards/val/index.json")
    assert not any(k.startswith("/tmp") for k in FakeS3.store)
    stage = tmp_path / "stage"
    got = shards.open_shards(f"{fake_s3}/shards/val", local_dir=str(stage))
    assert all(p.startswith(str(stage)) for p in got.images.read_paths)  # read locally
    assert got.source == f"{fake_s3}/shards/val/instances_val2017.json"
    for i, r in enumerate(local_info.records):
        np.testing.assert_array_equal(got.images.read(i), cv2.imread(r.image_path))
    with _loader(local_info, batch=4) as a, _loader(got, got.images, batch=4) as b:
        _same_batches(list(a.epoch(0)), list(b.epoch(0)))
    from yolox_jax.eval.coco_eval import load_coco_gt

    assert len(load_coco_gt(got.source).getImgIds()) == 8  # pycocotools from the URL
    # a second open reuses the verified copies; a changed remote shard is caught
    shard = got.images.index["shards"][0]["file"]
    before = os.path.getmtime(stage / os.listdir(stage)[0] / shard)
    shards.open_shards(f"{fake_s3}/shards/val", local_dir=str(stage))
    assert os.path.getmtime(stage / os.listdir(stage)[0] / shard) == before
    data = bytearray(paths.read_bytes(f"{fake_s3}/shards/val/{shard}"))
    data[len(data) // 2] ^= 0xFF
    paths.write_bytes(f"{fake_s3}/shards/val/{shard}", bytes(data))
    with pytest.raises(shards.ShardError, match=f"shard {fake_s3}/shards/val/{shard} is .* the "
                       "index says .*re-pack or re-upload"):
        shards.open_shards(f"{fake_s3}/shards/val", local_dir=str(tmp_path / "stage2"))
    # file:// is the local path
    local_set = tmp_path / "local_set"
    pack.pack_dataset(local_info, str(local_set), progress=False)
    via_url = shards.open_shards(f"file://{local_set}")
    assert via_url.images.read_paths == shards.open_shards(local_set).images.read_paths


def test_gs_urls_are_read_in_place_by_the_native_reader():
    """No network here: only the routing is checked (gs:// -> the ArrayRecord reader's own GCS
    client, unless a local dir is asked for)."""
    index = {"shards": [{"file": "a-00000.array_record"}]}
    assert shards._read_paths("gs://b/set", index, "") == ["gs://b/set/a-00000.array_record"]
    assert shards._read_paths("/data/set", index, "") == ["/data/set/a-00000.array_record"]


# ------------------------------------------------------------------------- bad shard sets
def _rewrite_shard(loc, shard_no: int, edit) -> None:
    """Rewrite one shard through `edit(list of record bytes) -> list`, updating the index's size
    and sha256 (a set whose index was regenerated over bad records)."""
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    index = json.loads((loc / "index.json").read_text())
    spec = index["shards"][shard_no]
    path = loc / spec["file"]
    reader = ArrayRecordReader(str(path))
    records = edit(list(reader.read_all()))
    reader.close()
    writer = ArrayRecordWriter(str(path), shards.WRITER_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()
    spec["bytes"], spec["sha256"] = path.stat().st_size, shards._sha256_file(str(path))
    (loc / "index.json").write_text(json.dumps(index))


@pytest.fixture
def small_set(tmp_path):
    (tmp_path / "imgs").mkdir()
    info = _synthetic(tmp_path / "imgs", 8)
    loc = tmp_path / "set"
    pack.pack_dataset(info, str(loc), name="s", num_shards=2, progress=False)
    return info, loc


def test_truncated_foreign_and_missing_shards(small_set, tmp_path):
    info, loc = small_set
    index = json.loads((loc / "index.json").read_text())
    first = loc / index["shards"][0]["file"]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])
    with pytest.raises(shards.ShardError, match=f"shard {first} is {len(data) // 2} bytes, the "
                       f"index says {len(data)}: truncated"):
        shards.open_shards(loc)
    first.write_bytes(b"not an array record" * (len(data) // 19 + 1))  # foreign, padded
    with open(first, "r+b") as f:
        f.truncate(len(data))
    with pytest.raises(shards.ShardError, match=f"shard {first} .*(not a readable ArrayRecord"
                       "|holds 0 ArrayRecord records, the index says 4)"):
        shards.open_shards(loc)
    first.write_bytes(data)
    # an ArrayRecord file of someone else's records (index regenerated over it)
    _rewrite_shard(loc, 1, lambda recs: [b"\x08\x96\x01 tf.Example?" for _ in recs])
    with pytest.raises(shards.ShardRecordError,
                       match=r"shard .*s-00001.array_record record 0 \(dataset record 4\): not a "
                       "yolox-jax record .*foreign"):
        shards.open_shards(loc)
    os.remove(loc / "s-00001.array_record")
    with pytest.raises(shards.ShardError, match="s-00001.array_record listed in index.json cannot "
                       "be found"):
        shards.open_shards(loc)
    with pytest.raises(shards.ShardError, match="index.json not found: .* is not a shard set"):
        shards.open_shards(tmp_path / "imgs")


def test_index_disagreeing_with_its_files(small_set):
    info, loc = small_set
    path = loc / "index.json"
    good = path.read_text()
    index = json.loads(good)
    # record counts that do not add up
    index["shards"][1]["num_records"] = 5
    path.write_text(json.dumps(index))
    with pytest.raises(shards.ShardError, match="shard record counts .* disagree with "
                       "num_records 8"):
        shards.open_shards(loc)
    # counts that add up but do not match the file
    index = json.loads(good)
    index["shards"][0]["num_records"], index["shards"][1]["num_records"] = 3, 5
    index["shards"][1]["first"] = 3
    path.write_text(json.dumps(index))
    with pytest.raises(shards.ShardError, match="s-00000.array_record holds 4 ArrayRecord records"
                       ", the index says 3"):
        shards.open_shards(loc)
    # the shards listed in the wrong order (sizes and hashes swapped with them)
    index = json.loads(good)
    a, b = index["shards"]
    a["file"], b["file"] = b["file"], a["file"]
    for k in ("bytes", "sha256"):
        a[k], b[k] = b[k], a[k]
    path.write_text(json.dumps(index))
    with pytest.raises(shards.ShardRecordError, match=r"s-00001.array_record record 0 \(dataset "
                       r"record 0\): the record is dataset record 4 .*shard and index disagree"):
        shards.open_shards(loc)
    # labels changed after packing
    path.write_text(good)
    labels = loc / "labels.npz"
    labels.write_bytes(labels.read_bytes() + b"\0")
    with pytest.raises(shards.ShardError, match="labels.npz is .* bytes with another sha256 than "
                       "the index records"):
        shards.open_shards(loc)
    path.write_text('{"kind": "something else"}')
    with pytest.raises(shards.ShardError, match="not a yolox-jax shard index"):
        shards.open_shards(loc)
    path.write_text("{broken")
    with pytest.raises(shards.ShardError, match="malformed shard index"):
        shards.open_shards(loc)


def test_record_whose_boxes_do_not_parse(small_set, caplog):
    """Record 5's labels are cut short: opening works (first records fine), verify names it,
    training replaces it (counted, warned with the shard and record), evaluation stops on it."""
    info, loc = small_set

    def cut(recs):
        r = recs[1]  # record 1 of shard 1 = dataset record 5
        (hlen,) = struct.unpack("<I", r[4:8])
        recs[1] = r[: 8 + hlen + 20] + r[8 + hlen + 42 * 3:]  # boxes bytes missing
        return recs

    _rewrite_shard(loc, 1, cut)
    got = shards.open_shards(loc)
    with pytest.raises(shards.ShardError, match=r"(?s)1 problem\(s\) in shard set .*"
                       r"s-00001.array_record record 1 \(dataset record 5\): record is .* bytes, "
                       "its header describes .*truncated or corrupt labels"):
        shards.verify_shards(str(loc))
    caplog.set_level(logging.WARNING, logger="yolox_jax.data.pipeline")
    with _loader(got, got.images, batch=4, max_labels=20) as loader:
        list(loader.epoch(0))
        summary = loader.summary(0)
    assert summary["unreadable_records"] == [5] and summary["unreadable_loads"] >= 1
    assert any("s-00001.array_record record 1 (dataset record 5)" in r.message
               for r in caplog.records)
    with pytest.raises(shards.ShardRecordError, match=r"record 1 \(dataset record 5\)"):
        got.images.read(5)
    np.testing.assert_array_equal(got.images.read(4), cv2.imread(info.records[4].image_path))
    # a flipped image byte: the record's CRC names it too
    _rewrite_shard(loc, 0, lambda recs: [*recs[:2], recs[2][:-10] + bytes(10), recs[3]])
    with pytest.raises(shards.ShardRecordError, match=r"s-00000.array_record record 2 \(dataset "
                       r"record 2\): image bytes fail their CRC-32"):
        shards.open_shards(loc).images.read(2)


def test_one_decoder_for_files_and_bytes(tmp_path):
    """decode_image of a file's bytes is cv2.imread of the file (gray PNG -> BGR too), and an
    undecodable record names itself."""
    gray = np.arange(48 * 40, dtype=np.uint8).reshape(48, 40)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    data = (tmp_path / "g.png").read_bytes()
    np.testing.assert_array_equal(decode_image(data), cv2.imread(str(tmp_path / "g.png")))
    with pytest.raises(Exception, match="record 3 .*cannot be decoded"):
        decode_image(b"\xff\xd8 junk", "record 3")


def test_config_keys_choose_the_shard_sets(coco_small):
    """`data.train_shards` / `data.val_shards` replace the folder layout in the trainer's and the
    evaluator's dataset choice (what `train.py --config.data.train_shards=...` uses)."""
    from yolox_jax.data.datasets import read_split

    info, loc = coco_small
    config = variant_config("yolox_nano")
    config.data.update(train_shards=loc, val_shards=f"file://{loc}", data_dir="/nonexistent")
    for got in (read_split(config, "train"), read_split(config, "val")):
        assert isinstance(got.images, shards.ShardImages) and got.format == "coco"
        _same_records(got, info)
    config.data.update(train_shards="", val_shards="")
    with pytest.raises(Exception, match="nonexistent"):
        read_split(config, "train")


def test_paths_join_keeps_urls_and_absolute_parts():
    assert paths.join("gs://b/coco", "annotations", "x.json") == "gs://b/coco/annotations/x.json"
    assert paths.join("gs://b/coco", "gs://c/x.json") == "gs://c/x.json"  # as os.path.join
    assert paths.join("gs://b/coco", "/local/x.json") == "/local/x.json"
    assert paths.join("/data", "file:///other/x") == "file:///other/x"
    assert paths.local("file:///data/x") == "/data/x" and not paths.is_url("file:///data/x")
    assert paths.is_url("s3://b/x") and not paths.is_url("/data/x")
