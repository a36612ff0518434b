"""COCO / VOC readers: the official box rules (COCO clip-and-keep, VOC minus one), and a clear
error or a counted warning for every kind of bad input."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from conftest import need_shared

from yolox_jax.data.pipeline import _records_arrays
from yolox_jax.data.readers import DatasetError, read_coco, read_voc


def _image(path, h=40, w=60):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))


def _coco(tmp_path, anns, images=None, categories=None, name="instances_val2017.json",
          write_images=True):
    images = images if images is not None else [
        {"id": 7, "file_name": "a.jpg", "width": 60, "height": 40},
        {"id": 3, "file_name": "b.jpg", "width": 60, "height": 40},
    ]
    # unsorted, non-contiguous ids: class i is the i-th id in sorted order (official class_ids)
    categories = categories if categories is not None else [
        {"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"},
    ]
    (tmp_path / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": anns, "categories": categories}
    (tmp_path / "annotations" / name).write_text(json.dumps(data))
    if write_images:
        for im in images:
            if "file_name" in im:
                _image(tmp_path / "val2017" / im["file_name"])
    return tmp_path


def _ann(aid, image_id, bbox, cat=1, area=None, iscrowd=0):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": iscrowd,
            "area": bbox[2] * bbox[3] if area is None else area}


def test_coco_official_rules_and_category_mapping(tmp_path, caplog):
    anns = [
        _ann(1, 7, [10, 5, 20, 10], cat=18),            # inside: kept as is
        _ann(2, 7, [-5, -2, 20, 10], cat=3),            # clipped at 0: x1 = 0, x2 = 0 + 20
        _ann(3, 7, [50, 30, 20, 20], cat=1),            # clipped at the far edge: x2 = 60, y2 = 40
        _ann(4, 7, [5, 5, 10, 10], area=0),             # area 0: dropped (official)
        _ann(5, 7, [70, 5, 10, 10]),                    # right of the image: x2 < x1, dropped
        _ann(6, 7, [12, 12, 0, 5], area=3),             # zero width, area > 0: kept (official)
        _ann(7, 3, [1, 2, 3, 4], cat=3, iscrowd=1),     # crowd: kept, ignore
        _ann(8, 99, [1, 2, 3, 4]),                      # unknown image: ignored (pycocotools)
    ]
    with caplog.at_level(logging.WARNING, logger="yolox_jax.data.readers"):
        info = read_coco(_coco(tmp_path, anns), "annotations/instances_val2017.json")
    assert info.class_names == ("person", "car", "dog") and info.category_ids == (1, 3, 18)
    a, b = info.records
    assert (a.image_id, b.image_id) == (7, 3)  # json order, as getImgIds
    assert a.image_path == str(tmp_path / "val2017" / "a.jpg") and (a.height, a.width) == (40, 60)
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15], [0, 0, 20, 10], [50, 30, 60, 40],
                                            [12, 12, 12, 17]])
    assert a.boxes.dtype == np.float64 and a.classes.dtype == np.int64
    np.testing.assert_array_equal(a.classes, [2, 1, 0, 0])
    np.testing.assert_array_equal(b.boxes, [[1, 2, 4, 6]])
    assert b.ignore.tolist() == [True] and not a.ignore.any()
    w = info.warnings.counts
    assert w["dropped: area <= 0 (official rule)"] == 1
    assert w["dropped: outside the image after clipping (official rule)"] == 1
    assert w["boxes clipped to the image"] == 2
    assert w["kept zero-width/height boxes (official rule keeps them)"] == 1
    assert w["annotations of unknown image ids (ignored, as pycocotools)"] == 1
    assert info.stats == {"images": 2, "boxes": 5, "crowd": 1, "images_without_boxes": 0}
    logged = [r for r in caplog.records if r.name == "yolox_jax.data.readers"]
    assert len(logged) == 1 and "a.jpg annotation 4" in logged[0].getMessage()
    # what the training pipeline reads: crowd boxes are not targets
    _, boxes, classes, _, _ = _records_arrays(info.records)
    assert len(boxes[1]) == 0 and len(boxes[0]) == 4


def test_coco_path_forms(tmp_path):
    root = _coco(tmp_path, [_ann(1, 7, [1, 1, 5, 5])])
    ann = root / "annotations" / "instances_val2017.json"
    by_name = read_coco(root, "instances_val2017.json")  # under annotations/, images: val2017
    by_rel = read_coco(root, "annotations/instances_val2017.json", "val2017")
    resolved = read_coco(str(ann), str(root / "val2017"))  # (ann_path, image_dir): the trainer's
    for info in (by_rel, resolved):
        assert [r.image_path for r in info.records] == [r.image_path for r in by_name.records]
    with pytest.raises(DatasetError, match="cannot tell the image folder.*pass image_dir"):
        read_coco(_coco(tmp_path / "x", [], name="mine.json"), "mine.json")


def test_coco_missing_file_name_uses_official_fallback(tmp_path):
    images = [{"id": 139, "width": 60, "height": 40}]
    root = _coco(tmp_path, [], images=images, write_images=False)
    _image(root / "val2017" / "000000000139.jpg")
    info = read_coco(root, "instances_val2017.json")
    assert info.records[0].image_path.endswith("val2017/000000000139.jpg")
    assert info.warnings.counts["images without file_name (official fallback {id:012}.jpg)"] == 1


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"COCO annotation file not found; tried .*nope.json"),
    ("malformed", r"malformed COCO json .*instances_val2017.json.*line 1"),
    ("no_images", r"expected a list under 'images'"),
    ("bbox_missing", r"annotation 1 \(image 7\) lacks the required field 'bbox'"),
    ("bbox_short", r"annotation 1 \(image 7\) bbox must be \[x, y, w, h\]"),
    ("bbox_text", r"annotation 1 \(image 7\) bbox must be a number, got 'a'"),
    ("unknown_category", r"annotation 1 \(image 7\) has category_id 5, not in .*\[1, 3, 18\]"),
    ("no_iscrowd", r"lacks the required field 'iscrowd'"),
    ("duplicate_image", r"duplicate image id 7"),
    ("bad_size", r"image 3 has width 0.0, expected > 0"),
    ("missing_image", r"1 of 2 image files .* do not exist, e.g. '.*b.jpg'"),
])
def test_coco_errors_name_the_problem(tmp_path, case, pattern):
    good = _ann(1, 7, [1, 1, 5, 5])
    kw = {}
    anns = [good]
    if case == "bbox_missing":
        anns = [{k: v for k, v in good.items() if k != "bbox"}]
    elif case == "bbox_short":
        anns = [{**good, "bbox": [1, 2, 3]}]
    elif case == "bbox_text":
        anns = [{**good, "bbox": ["a", 2, 3, 4]}]
    elif case == "unknown_category":
        anns = [{**good, "category_id": 5}]
    elif case == "no_iscrowd":
        anns = [{k: v for k, v in good.items() if k != "iscrowd"}]
    elif case == "duplicate_image":
        kw["images"] = [{"id": 7, "file_name": "a.jpg", "width": 6, "height": 4}] * 2
    elif case == "bad_size":
        kw["images"] = [{"id": 3, "file_name": "b.jpg", "width": 0, "height": 4}]
        anns = []
    root = _coco(tmp_path, anns, **kw)
    ann = root / "annotations" / "instances_val2017.json"
    if case == "malformed":
        ann.write_text('{"images": [')
    elif case == "no_images":
        ann.write_text('{"categories": []}')
    elif case == "missing_image":
        (root / "val2017" / "b.jpg").unlink()
    name = "nope.json" if case == "missing" else "instances_val2017.json"
    with pytest.raises(DatasetError, match=pattern):
        read_coco(root, name)


# ------------------------------------------------------------------------------------- VOC
def _voc_xml(objects, size=(60, 40)):
    objs = "".join(
        f"<object><name>{n}</name>{'' if d is None else f'<difficult>{d}</difficult>'}"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        "</bndbox></object>"
        for n, b, d in objects
    )
    return (f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"
            f"{objs}</annotation>")


def _voc(tmp_path, xmls, split="test", images=True):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for stem, text in xmls.items():
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(text)
        if images:
            _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
    (tmp_path / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(xmls) + "\n")
    return tmp_path


def test_voc_official_minus_one_difficult_and_order(tmp_path, caplog):
    xmls = {
        "img2": _voc_xml([("dog", (10, 5, "30.7", 15), 0), ("cat", (1, 1, 60, 40), 1)]),
        "img1": _voc_xml([("cat", (2, 3, 4, 5), None),       # no <difficult>: False (official)
                          ("dog", (50, 30, 70, 50), 0),      # outside: kept, counted
                          ("dog", (7, 7, 7, 9), 0)]),        # zero width: kept, counted
    }
    with caplog.at_level(logging.WARNING, logger="yolox_jax.data.readers"):
        info = read_voc(_voc(tmp_path, xmls), "test", ["cat", "dog"])
    a, b = info.records
    assert (a.image_id, b.image_id) == ("img2", "img1") and (a.height, a.width) == (40, 60)
    assert a.image_path == str(tmp_path / "JPEGImages" / "img2.jpg")
    # int(float(text)) - 1, as the official AnnotationTransform
    np.testing.assert_array_equal(a.boxes, [[9, 4, 29, 14], [0, 0, 59, 39]])
    np.testing.assert_array_equal(a.classes, [1, 0])
    assert a.difficult.tolist() == [False, True] and not a.ignore.any()  # keep_difficult
    np.testing.assert_array_equal(b.boxes, [[1, 2, 3, 4], [49, 29, 69, 49], [6, 6, 6, 8]])
    assert info.warnings.counts == {
        "kept boxes outside the image (the official does not clip)": 1,
        "kept zero/negative-area boxes (the official keeps every box)": 1,
    }
    assert info.stats == {"images": 2, "boxes": 5, "difficult": 1, "images_without_boxes": 0}
    assert info.category_ids == (0, 1)
    assert sum("img1.xml object 1" in r.getMessage() for r in caplog.records) == 1
    drop = read_voc(tmp_path, "test", ["cat", "dog"], keep_difficult=False)
    assert drop.records[0].ignore.tolist() == [False, True]


def test_voc_default_classes_are_the_official_twenty(tmp_path):
    info = read_voc(_voc(tmp_path, {"x": _voc_xml([("tvmonitor", (1, 1, 5, 5), 0)])}), "test")
    assert len(info.class_names) == 20 and info.records[0].classes.tolist() == [19]


@pytest.mark.parametrize("case, pattern", [
    ("unknown_class", r"x.xml: object 0 has class 'raccoon', not among the 2 class names"),
    ("malformed", r"malformed VOC xml .*x.xml"),
    ("no_bndbox", r"x.xml: object 0 \(cat\) lacks <bndbox>"),
    ("no_xmax", r"x.xml: object 0 <bndbox> lacks <xmax>"),
    ("text_coord", r"x.xml: object 0 <ymin> must be a number, got 'abc'"),
    ("no_size", r"x.xml: <size> lacks <width>"),
    ("missing_xml", r"VOC annotation .*y.xml.* \(listed in .*test.txt\) not found"),
    ("missing_split", r"VOC split file .*val.txt.* not found"),
    ("empty_split", r"lists no images"),
    ("missing_image", r"1 of 1 image files .* do not exist, e.g. '.*x.jpg'"),
])
def test_voc_errors_name_the_file(tmp_path, case, pattern):
    xml = _voc_xml([("cat", (1, 1, 5, 5), 0)])
    if case == "unknown_class":
        xml = _voc_xml([("raccoon", (1, 1, 5, 5), 0)])
    elif case == "malformed":
        xml = xml[:-5]
    elif case == "no_bndbox":
        xml = "<annotation><size><width>6</width><height>4</height></size>" \
              "<object><name>cat</name></object></annotation>"
    elif case == "no_xmax":
        xml = xml.replace("<xmax>5</xmax>", "")
    elif case == "text_coord":
        xml = xml.replace("<ymin>1</ymin>", "<ymin>abc</ymin>")
    elif case == "no_size":
        xml = xml.replace("<width>60</width>", "")
    root = _voc(tmp_path, {"x": xml}, images=case != "missing_image")
    split = "test"
    if case == "missing_xml":
        (root / "ImageSets/Main/test.txt").write_text("x\ny\n")
    elif case == "missing_split":
        split = "val"
    elif case == "empty_split":
        (root / "ImageSets/Main/test.txt").write_text("\n")
    with pytest.raises(DatasetError, match=pattern):
        read_voc(root, split, ["cat", "dog"])


# ----------------------------------------------------------------------------- real data
def test_real_coco_subset():
    root = need_shared("data/coco_subset")
    info = read_coco(root, "annotations/instances_val2017_subset.json")
    assert len(info) == 191 and len(info.class_names) == 80
    assert info.stats["boxes"] == 1660 and info.stats["crowd"] == 19
    assert not info.warnings
    assert info.category_ids[-1] == 90 and info.class_names[0] == "person"


def test_real_voc_raccoon():
    root = need_shared("data/voc_raccoon")
    test = read_voc(root, "test", ["raccoon"])
    train = read_voc(root, "train", ["raccoon"])
    assert (len(test), test.stats["boxes"]) == (40, 44)
    assert (len(train), train.stats["boxes"]) == (160, 173)
    gray = 0
    for r in test.records + train.records:  # the xml sizes are the images' (3 are grayscale)
        img = cv2.imread(r.image_path, cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (r.height, r.width), r.image_path
        gray += img.ndim == 2
    assert gray == 3
    with pytest.raises(DatasetError, match="class 'raccoon', not among the 20"):
        read_voc(root, "test")
