"""Config -> dataset: the one place that knows which reader a `config.data` section means.

`read_split(config, "train" | "val")` reads COCO json (`train_ann` / `val_ann`, `train_images` /
`val_images` under `data_dir`), VOC (`voc_train_split` / `voc_val_split`, `class_names`) or YOLO
(`yaml`, default `data_dir/data.yaml`; the yaml keys `yolo_train_split` / `yolo_val_split`). The
CLIs and the preview call it; the trainer and the evaluator will (phase 2 of issue 16).

`for_scoring(info)` gives what the evaluator scores: COCO and VOC as read (COCOeval / the VOC
metric); YOLO datasets are scored as COCO (pycocotools, the metric YOLO users compare with),
through a COCO ground truth built in memory from the records.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from yolox_jax.config import ConfigError
from yolox_jax.data import readers

SPLITS = ("train", "val")


def yolo_yaml(data: ml_collections.ConfigDict) -> str:
    """`data.yaml`, else `data_dir/data.yaml`, else `data_dir` (an images/<split> layout)."""
    if data.get("yaml"):
        return str(data.yaml)
    if not data.data_dir:
        raise ConfigError("data.format 'yolo' needs data.yaml (the data.yaml path) or "
                          "data.data_dir (its folder)")
    return str(data.data_dir)


def read_split(config: ml_collections.ConfigDict, split: str = "train") -> readers.DatasetInfo:
    """The `split` ("train" or "val") of the dataset `config.data` names -> DatasetInfo.

    For "train", a dataset with more classes than `model.num_classes` is a ConfigError (the
    model could not learn the extra classes; nothing else would say so).
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    d = config.data
    names = tuple(d.class_names) or None
    train = split == "train"
    if d.format == "coco":
        info = readers.read_coco(d.data_dir, d.train_ann if train else d.val_ann,
                                 (d.train_images if train else d.val_images) or None)
    elif d.format == "voc":
        info = readers.read_voc(d.data_dir, d.voc_train_split if train else d.voc_val_split,
                                names)
    elif d.format == "yolo":
        path = yolo_yaml(d)
        key = d.get("yolo_train_split", "train") if train else d.get("yolo_val_split", "val")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "data.yaml")):
            info = read_yolo_folder(path, key, names)
        else:
            info = readers.read_yolo(path, key, names)
    else:
        raise ConfigError(f"data.format must be 'coco', 'voc' or 'yolo', got {d.format!r}")
    num_classes = int(config.model.num_classes)
    if train and len(info.class_names) > num_classes:
        raise ConfigError(
            f"{info.source} has {len(info.class_names)} classes but model.num_classes is "
            f"{num_classes}; set --config.model.num_classes={len(info.class_names)}"
        )
    return info


def read_yolo_folder(root: str, split: str, class_names: Any) -> readers.DatasetInfo:
    """A YOLO layout without data.yaml: `root/images/<split>/` (labels in `root/labels/<split>/`),
    class names from the config."""
    if not class_names:
        raise ConfigError(f"{root} has no data.yaml: give the class names "
                          "(--config.data.class_names=...) or a data.yaml")
    folder = os.path.join(root, "images", split)
    if not os.path.isdir(folder):
        raise readers.DatasetError(f"YOLO dataset {root!r}: neither data.yaml nor the image "
                                   f"folder {folder!r} exists")
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs
                   if os.path.splitext(f)[1].lower() in readers.IMAGE_EXTS)
    if not paths:
        raise readers.DatasetError(f"{folder} has no images")
    return readers.yolo_records(paths, root, tuple(class_names), f"{folder}")


def coco_ground_truth(info: readers.DatasetInfo) -> dict[str, Any]:
    """Records -> a COCO detection json (dict): image ids 0..N-1 in record order, category ids
    `info.category_ids`, bbox [x, y, w, h] float pixels, iscrowd = the records' ignore flags."""
    images, anns = [], []
    for i, r in enumerate(info.records):
        images.append({"id": i, "file_name": os.path.basename(r.image_path),
                       "width": int(r.width), "height": int(r.height)})
        for box, cls, ign in zip(r.boxes, r.classes, r.ignore, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": i,
                         "category_id": int(info.category_ids[int(cls)]),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(bool(ign))})
    cats = [{"id": int(c), "name": n}
            for c, n in zip(info.category_ids, info.class_names, strict=True)]
    return {"images": images, "annotations": anns, "categories": cats}


def for_scoring(info: readers.DatasetInfo) -> tuple[readers.DatasetInfo, Any]:
    """(DatasetInfo the evaluator scores, pycocotools COCO or None).

    COCO / VOC: as read (the evaluator loads the COCO json itself). YOLO: a COCO view (image ids
    0..N-1) and its ground truth, so `evaluate_dataset(predictor, view, coco_gt=gt)` gives
    COCOeval numbers.
    """
    if info.format != "yolo":
        return info, None
    from yolox_jax.eval.coco_eval import load_coco_gt

    records = [dataclasses.replace(r, image_id=i) for i, r in enumerate(info.records)]
    view = dataclasses.replace(info, records=records, format="coco")
    return view, load_coco_gt(coco_ground_truth(view))
