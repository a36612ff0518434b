"""Config -> dataset: the one place that knows which reader a `config.data` section means.

`read_split(config, "train" | "val")` reads a packed shard set (`train_shards` / `val_shards`,
a folder or URL written by `yolox-jax pack`) when one is set, else COCO json (`train_ann` /
`val_ann`, `train_images` / `val_images` under `data_dir`), VOC (`voc_train_split` /
`voc_val_split`, `class_names`) or YOLO (`yaml`, default `data_dir/data.yaml`; the yaml keys
`yolo_train_split` / `yolo_val_split`). The CLIs, the preview, the trainer and the evaluator
all call it. YOLO datasets are scored as COCO (`eval.coco_eval.for_scoring`).
"""

from __future__ import annotations

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
    shards_at = d.get(f"{split}_shards", "")
    if shards_at:
        from yolox_jax.data.shards import open_shards

        info = open_shards(shards_at, local_dir=d.get("shards_local_dir", ""))
    elif d.format == "coco":
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
