"""YOLO txt datasets: the reader on a synthetic dataset with every kind of bad row, the config
wiring (`datasets.read_split`), and VOC -> COCO -> YOLO -> VOC through `yolox-jax convert-dataset`
giving the same boxes back."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from yolox_jax.config import ConfigError, variant_config
from yolox_jax.data import datasets, readers
from yolox_jax.data.readers import DatasetError, read_coco, read_voc, read_yolo


def _image(path, h=40, w=80):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))


def _yolo(root, labels: dict[str, str | None], yaml_text=None, split="train"):
    for name, text in labels.items():
        _image(root / "images" / split / f"{name}.jpg")
        if text is not None:
            lab = root / "labels" / split / f"{name}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text(text)
    (root / "data.yaml").write_text(yaml_text or (
        f"path: .\n{split}: images/{split}\nnames:\n  0: cat\n  1: dog\n"))
    return root / "data.yaml"


def test_rows_boxes_and_counted_warnings(tmp_path, caplog):
    rows = "\n".join([
        "0 0.5 0.5 0.25 0.5",        # x 30..50, y 10..30 in 80x40
        "1 0.05 0.5 0.2 0.5",        # x -4..12: clipped to 0..12
        "1 0.5 0.5 0.1",             # 4 columns: dropped
        "2 0.5 0.5 0.1 0.1",         # class 2 of 2: dropped
        "0.5 0.5 0.5 0.1 0.1",       # class not an integer: dropped
        "0 1.5 0.5 0.1 0.1",         # not normalised: dropped
        "0 0.5 0.5 0 0.1",           # zero width: dropped
        "x 0.5 0.5 0.1 0.1",         # not a number: dropped
        "1 0.1 0.1 0.3 0.1 0.3 0.3",  # a segment: its bounding box x 8..24, y 4..12
        "",
    ])
    path = _yolo(tmp_path / "ds", {"a": rows, "b": "", "c": None})
    with caplog.at_level(logging.WARNING, logger="yolox_jax.data.readers"):
        info = read_yolo(path, "train")
    assert info.format == "yolo" and info.class_names == ("cat", "dog")
    assert [r.image_id for r in info.records] == ["images/train/a.jpg", "images/train/b.jpg",
                                                  "images/train/c.jpg"]
    a, b, c = info.records
    assert (a.height, a.width) == (40, 80)
    np.testing.assert_allclose(a.boxes, [[30, 10, 50, 30], [0, 10, 12, 30], [8, 4, 24, 12]])
    assert a.classes.tolist() == [0, 1, 1]
    assert len(b) == 0 and len(c) == 0
    w = info.warnings.counts
    assert w["rows with a wrong column count (expected 5: class cx cy w h; dropped)"] == 1
    assert w["rows with a class id not in 0..1 (dropped)"] == 2
    assert w["rows with values outside [0, 1] (not normalised; dropped)"] == 1
    assert w["rows with zero width or height (dropped)"] == 1
    assert w["rows with values that are not numbers (dropped)"] == 1
    assert w["segment rows converted to their bounding box"] == 1
    assert w["boxes clipped to the image"] == 1
    assert w["images without a label file (no objects)"] == 1
    assert info.stats == {"images": 3, "boxes": 3, "missing_labels": 1, "images_without_boxes": 2}
    logged = [r.message for r in caplog.records if "yolo" in r.message]
    assert len(logged) == 1 and "images without a label file (no objects): 1" in logged[0]
    assert "a.txt:3" in info.warnings.examples[
        "rows with a wrong column count (expected 5: class cx cy w h; dropped)"][0]


def test_list_files_names_and_exif_rotation(tmp_path):
    root = tmp_path / "ds"
    _yolo(root, {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.5 0.5 0.5 0.5\n"})
    (root / "train.txt").write_text("./images/train/b.jpg\nimages/train/a.jpg\n")
    (root / "data.yaml").write_text("train: train.txt\nval: [images/train]\nnames: [cat, dog]\n")
    info = read_yolo(root, "train")  # the folder: its data.yaml
    assert [r.image_id for r in info.records] == ["images/train/b.jpg", "images/train/a.jpg"]
    assert len(read_yolo(root / "data.yaml", "val")) == 2
    from PIL import Image

    img = Image.new("RGB", (80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: cv2.imread gives 40 wide, 80 high
    img.save(root / "images" / "train" / "a.jpg", exif=exif)
    rec = read_yolo(root, "val").records[0]
    assert (rec.height, rec.width) == (80, 40) == cv2.imread(rec.image_path).shape[:2]


@pytest.mark.parametrize("case, pattern", [
    ("no_yaml", "data.yaml .* not found"),
    ("bad_yaml", "malformed YOLO data.yaml"),
    ("no_split", "no 'train' split .it has \\['val'\\]"),
    ("bad_names", "'names' keys must be 0..1"),
    ("nc_mismatch", "nc is 3 but 'names' has 2"),
    ("missing_list_entry", "1 of 1 images listed in .*nope.jpg"),
    ("empty", "has no images"),
])
def test_errors_name_the_file(tmp_path, case, pattern):
    root = tmp_path / "ds"
    path = _yolo(root, {"a": "0 0.5 0.5 0.1 0.1\n"})
    texts = {
        "bad_yaml": "train: [unclosed\n",
        "no_split": "val: images/train\nnames: [a, b]\n",
        "bad_names": "train: images/train\nnames: {0: a, 2: b}\n",
        "nc_mismatch": "train: images/train\nnc: 3\nnames: [a, b]\n",
        "missing_list_entry": "train: list.txt\nnames: [a, b]\n",
        "empty": "train: empty\nnames: [a, b]\n",
    }
    if case == "no_yaml":
        path.unlink()
    else:
        path.write_text(texts[case])
    (root / "list.txt").write_text("nope.jpg\n")
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match=pattern):
        read_yolo(path, "train")


def test_read_split_dispatches_and_checks_classes(tmp_path):
    path = _yolo(tmp_path / "ds", {"a": "1 0.5 0.5 0.1 0.1\n"}, split="val")
    (tmp_path / "ds" / "data.yaml").write_text(
        "train: images/val\nval: images/val\nnames: [cat, dog]\n")
    c = variant_config("yolox_nano")
    c.data.format, c.data.yaml = "yolo", str(path)
    c.model.num_classes = 2
    assert datasets.read_split(c, "val").records[0].classes.tolist() == [1]
    c.data.yaml, c.data.data_dir = "", str(tmp_path / "ds")  # data_dir/data.yaml
    assert len(datasets.read_split(c, "train")) == 1
    c.model.num_classes = 1
    with pytest.raises(ConfigError, match="has 2 classes but model.num_classes is 1"):
        datasets.read_split(c, "train")
    c.data.format = "kitti"
    with pytest.raises(ConfigError, match="data.format must be 'coco', 'voc' or 'yolo'"):
        datasets.read_split(c, "train")


def test_yolo_is_scored_as_coco(tmp_path):
    path = _yolo(tmp_path / "ds", {"a": "1 0.5 0.5 0.25 0.5\n0 0.2 0.2 0.1 0.1\n", "b": ""})
    from yolox_jax.eval.coco_eval import for_scoring

    view, gt = for_scoring(read_yolo(path, "train"))
    assert view.format == "coco" and [r.image_id for r in view.records] == [0, 1]
    assert gt.getCatIds() == [0, 1] and len(gt.getAnnIds()) == 2
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[0], catIds=[1]))[0]
    assert ann["bbox"] == [30.0, 10.0, 20.0, 20.0] and ann["area"] == 400.0


def _write_voc(root, n=4):
    rng = np.random.default_rng(0)
    (root / "Annotations").mkdir(parents=True)
    stems = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        _image(root / "JPEGImages" / f"im{i}.jpg", h, w)
        objs = ""
        for _ in range(int(rng.integers(0, 3))):
            x1, y1 = int(rng.integers(1, w - 20)), int(rng.integers(1, h - 20))
            x2, y2 = x1 + int(rng.integers(3, 18)), y1 + int(rng.integers(3, 18))
            name = ("cat", "dog")[int(rng.integers(0, 2))]
            objs += (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}"
                     f"</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
                     "</object>")
        (root / "Annotations" / f"im{i}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>")
        stems.append(f"im{i}")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:3]) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text(stems[3] + "\n")
    return root


def test_convert_dataset_round_trip(tmp_path, capsys):
    from yolox_jax.cli import main

    voc = _write_voc(tmp_path / "voc")
    names = "cat,dog"
    assert main(["convert-dataset", "voc", str(voc), "coco", str(tmp_path / "coco"),
                 "--class-names", names]) == 0
    for split in ("train", "test"):
        assert main(["convert-dataset", "coco", str(tmp_path / "coco"), "yolo",
                     str(tmp_path / "yolo"), "--ann", f"{split}.json", "--images", split,
                     "--splits", f"{split}:{'val' if split == 'test' else split}"]) == 0
    assert main(["convert-dataset", "yolo", str(tmp_path / "yolo"), "voc", str(tmp_path / "back"),
                 "--splits", "train,val:test"]) == 0
    out = capsys.readouterr().out
    assert "-> " in out and "images" in out
    for split in ("train", "test"):
        a = read_voc(voc, split, ("cat", "dog"))
        coco = read_coco(tmp_path / "coco", f"{split}.json", split)
        yolo = read_yolo(tmp_path / "yolo", "val" if split == "test" else split)
        back = read_voc(tmp_path / "back", split, ("cat", "dog"))
        assert yolo.class_names == ("cat", "dog") == coco.class_names
        for ra, rc, ry, rb in zip(a.records, coco.records, yolo.records, back.records,
                                  strict=True):
            assert (ra.height, ra.width) == (rb.height, rb.width) == (ry.height, ry.width)
            np.testing.assert_array_equal(rc.boxes, ra.boxes)  # COCO keeps the floats exactly
            np.testing.assert_allclose(ry.boxes, ra.boxes, atol=1e-3)  # 6 decimals
            np.testing.assert_array_equal(rb.boxes, ra.boxes)  # integers again
            assert ra.classes.tolist() == rc.classes.tolist() == ry.classes.tolist() \
                == rb.classes.tolist()
            assert rb.image_id == ra.image_id
    assert len(readers.read_voc(voc, "train", ("cat", "dog")).records) == 3


def test_convert_dataset_bad_input(tmp_path, capsys):
    from yolox_jax.cli import main

    assert main(["convert-dataset", "yolo", str(tmp_path / "none"), "coco", str(tmp_path / "o")]) \
        == 2
    err = capsys.readouterr().err
    assert "data.yaml" in err and "not found" in err and "Traceback" not in err
    assert main(["convert-dataset", "coco", str(tmp_path), "yolo", str(tmp_path / "o")]) == 2
    assert "give --ann" in capsys.readouterr().err
