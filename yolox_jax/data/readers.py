"""Dataset readers: COCO json, Pascal VOC xml and YOLO txt -> one record per image.

A record holds `image_path`, `image_id` (COCO id / VOC file stem), `height`, `width`, `boxes`
[K, 4] float64 x1y1x2y2 in pixels, `classes` [K] int64 (contiguous 0..C-1), `ignore` [K] bool
(not a training target: COCO iscrowd) and `difficult` [K] bool (VOC; ignored by the VOC metric).

COCO (the official `COCODataset.load_anno_from_ids`): x1 = max(0, x), y1 = max(0, y),
x2 = min(width, x1 + max(0, w)), y2 = min(height, y1 + max(0, h)); a box is kept when
`area > 0 and x2 >= x1 and y2 >= y1` (so a zero-width box inside the image is kept, as there).
Crowd boxes get the same rule and `ignore = True` (the official drops them via
`getAnnIds(iscrowd=False)`; the pipeline drops `ignore` boxes).

VOC (the official `AnnotationTransform`): every coordinate is `int(float(text)) - 1` (0-based, not
clipped, nothing dropped); unknown class names are an error (the official raises KeyError).
`keep_difficult=True` (the official default, used by its VOC exp) keeps difficult boxes as
training targets; False flags them `ignore`. They stay in the record either way, because the VOC
metric needs them.

Files may be local paths, `file://` or object-storage URLs (`gs://...`, read through
`yolox_jax.data.paths` / etils.epath); records then name their images by URL too.

Bad input, case by case (the message always names the file):

* `DatasetError` (a ValueError): missing or malformed annotation file (json / xml), missing
  required fields (image id/width/height; annotation image_id/category_id/bbox/area/iscrowd; VOC
  size, object name/bndbox/coordinates), non-numeric values, a duplicate image id, an annotation
  category not in `categories`, a VOC class not in `class_names`, a missing split file, an empty
  dataset, and missing image files (all listed, when `check_images`).
* Counted warnings (logged once per read with counts and first examples, and kept in
  `DatasetInfo.warnings`): COCO boxes dropped by the official rule (area <= 0; outside the image
  or inverted after clipping), boxes clipped to the image, kept zero-width/height boxes,
  annotations of unknown image ids (pycocotools ignores them), images without `file_name` (the
  official `{id:012}.jpg` fallback), a json without `annotations`; VOC boxes outside the image
  or with zero / negative area (kept, as the official).

YOLO (the Ultralytics layout): a `data.yaml` with `path` (the dataset root, relative to the
yaml's folder; default that folder), `train` / `val` / `test` (image folders, `.txt` lists of
image paths, or lists of those, relative to the root) and `names` (a list, or a dict
{0: name, ...}; `nc` optional). The label of `.../images/x.jpg` is `.../labels/x.txt` (the last
`images` path component replaced, as Ultralytics), one `class cx cy w h` row per object,
normalised to [0, 1] by the image size (read from the file header, EXIF rotation applied as
cv2 does). Box corners are `(cx -+ w / 2) * width` etc. (float pixels, clipped to the image).
Counted warnings, the row dropped: wrong column count, values that are not numbers, a class id
that is not an integer in 0..C-1, values outside [0, 1], zero width / height; a segment row
(class x1 y1 x2 y2 ...) becomes its bounding box (counted); a missing label file is an image
without objects (counted, said once). `DatasetError`: a missing / malformed yaml, a missing split
key, folder or list file, an image list entry that does not exist, no images, bad `names`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yolox_jax.data import paths
from yolox_jax.data.classes import VOC_CLASSES

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5  # examples kept per warning / error kind


class DatasetError(ValueError):
    """An annotation file or dataset layout that cannot be read as asked (names the file)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its boxes (K of them). boxes [K, 4] float64 x1y1x2y2 pixels; classes [K]
    int64 contiguous; ignore [K] bool (not a training target); difficult [K] bool (VOC)."""

    image_path: str
    image_id: int | str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    ignore: np.ndarray
    difficult: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class ReadWarnings:
    """Counted anomalies of one read: kind -> count and the first examples (file / ids)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """One line per kind: count and the first examples."""
        return "\n".join(
            f"  {kind}: {n} (e.g. {'; '.join(self.examples[kind])})"
            for kind, n in sorted(self.counts.items())
        )


@dataclass
class DatasetInfo:
    """Records plus what evaluation needs: class names, COCO category ids (contiguous index ->
    COCO id; VOC: 0..C-1), the annotation source and the read's warnings / statistics."""

    records: list[ImageRecord]
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    format: str  # "coco", "voc" or "yolo"
    source: str  # the COCO json path, the VOC split file, or "data.yaml:split" (YOLO)
    warnings: ReadWarnings
    stats: dict[str, int]
    # Where the pixels are when not in the `image_path` files: a packed shard set's image source
    # (`yolox_jax.data.shards.ShardImages`); None: read `image_path`.
    images: Any = None

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> str:
        """Counts and warnings, human-readable."""
        head = f"{self.format} {self.source}: " + ", ".join(
            f"{k} {v}" for k, v in self.stats.items()
        )
        return head + ("\nwarnings:\n" + self.warnings.summary() if self.warnings else "")


def _report(info: DatasetInfo) -> DatasetInfo:
    if info.warnings:
        log.warning("%s", info.summary())
    else:
        log.info("%s", info.summary())
    return info


def _check_images(records: Sequence[ImageRecord], source: str) -> None:
    missing = [r.image_path for r in records if not paths.isfile(r.image_path)]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(records)} image files named by {source} do not exist, e.g. "
            + ", ".join(repr(m) for m in missing[:MAX_EXAMPLES])
        )


# --------------------------------------------------------------------------------------- COCO
def split_name(ann_path: str) -> str | None:
    """"train2017" / "val2017" ... from a COCO json name, or None."""
    m = re.search(r"(train|val|test)\d{4}", os.path.basename(ann_path))
    return m.group(0) if m else None


def _resolve_coco_paths(
    data_dir: str | os.PathLike, ann_file: str | os.PathLike, image_dir: str | os.PathLike | None
) -> tuple[str, str]:
    data_dir, ann_file = os.fspath(data_dir), os.fspath(ann_file)
    if image_dir is None and paths.isfile(data_dir):  # the (ann_path, image_dir) form
        return data_dir, ann_file
    tried = [paths.join(data_dir, ann_file), paths.join(data_dir, "annotations", ann_file)]
    ann_path = next((p for p in tried if paths.isfile(p)), None)
    if ann_path is None:
        raise DatasetError(
            "COCO annotation file not found; tried " + ", ".join(repr(p) for p in tried)
        )
    if image_dir is None:
        split = split_name(ann_path)
        if split is None:
            raise DatasetError(
                f"cannot tell the image folder of {ann_path!r} (no train/val/test<year> in its "
                "name); pass image_dir"
            )
        image_dir = split
    return ann_path, paths.join(data_dir, os.fspath(image_dir))


def _load_json(path: str) -> Any:
    try:
        return json.loads(paths.read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"malformed COCO json {path!r}: {e}") from e
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise DatasetError(f"cannot read COCO json {path!r}: {e}") from e


def _get(entry: Any, key: str, what: str, path: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{path}: {what} lacks the required field {key!r}: {str(entry)[:200]}")
    return entry[key]


def _number(value: Any, what: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{path}: {what} must be a number, got {value!r}")
    return float(value)


def read_coco(
    data_dir: str | os.PathLike,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> DatasetInfo:
    """A COCO detection json -> DatasetInfo (records in the json's image order).

    The json is `data_dir/ann_file`, else `data_dir/annotations/ann_file` (the official layout;
    an absolute `ann_file` is used as is). Images are in `data_dir/image_dir` (absolute allowed);
    None: the `train2017` / `val2017` ... part of the json name. Callers holding resolved paths
    may also call `read_coco(ann_path, image_dir)`. Contiguous class i is the i-th category by
    id (`category_ids[i]`), as the official `class_ids = sorted(getCatIds())`.
    """
    ann_path, img_root = _resolve_coco_paths(data_dir, ann_file, image_dir)
    data = _load_json(ann_path)
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_path}: expected a json object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_path}: expected a list under {key!r} (a COCO detection json)")
    warn = ReadWarnings()

    cats = {}
    for c in data["categories"]:
        cid = _get(c, "id", "a category", ann_path)
        cats[int(cid)] = str(_get(c, "name", f"category {cid}", ann_path))
    if not cats:
        raise DatasetError(f"{ann_path}: no categories")
    category_ids = tuple(sorted(cats))
    cat_index = {cid: i for i, cid in enumerate(category_ids)}

    images: dict[int, dict] = {}
    for im in data["images"]:
        iid = int(_number(_get(im, "id", "an image", ann_path), "image id", ann_path))
        if iid in images:
            raise DatasetError(f"{ann_path}: duplicate image id {iid}")
        for key in ("width", "height"):
            v = _number(_get(im, key, f"image {iid}", ann_path), f"image {iid} {key}", ann_path)
            if v <= 0:
                raise DatasetError(f"{ann_path}: image {iid} has {key} {v}, expected > 0")
        images[iid] = im
    if not images:
        raise DatasetError(f"{ann_path}: no images")

    if "annotations" not in data:
        warn.add("json without 'annotations' (every image has no boxes)", ann_path)
    anns_of: dict[int, list[dict]] = {iid: [] for iid in images}
    for a in data.get("annotations", []):
        aid = a.get("id", "?") if isinstance(a, dict) else "?"
        what = f"annotation {aid}"
        iid = int(_number(_get(a, "image_id", what, ann_path), f"{what} image_id", ann_path))
        if iid not in anns_of:
            warn.add("annotations of unknown image ids (ignored, as pycocotools)",
                     f"annotation {aid} -> image {iid}")
            continue
        anns_of[iid].append(a)

    records, num_boxes, num_crowd = [], 0, 0
    for iid, im in images.items():
        width, height = float(im["width"]), float(im["height"])
        if "file_name" in im:
            file_name = str(im["file_name"])
        else:
            file_name = f"{iid:012}.jpg"
            warn.add("images without file_name (official fallback {id:012}.jpg)", f"image {iid}")
        boxes, classes, crowd = [], [], []
        for a in anns_of[iid]:
            aid = a.get("id", "?")
            what = f"annotation {aid} (image {iid})"
            bbox = _get(a, "bbox", what, ann_path)
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DatasetError(f"{ann_path}: {what} bbox must be [x, y, w, h], got {bbox!r}")
            x, y, w, h = (_number(v, f"{what} bbox", ann_path) for v in bbox)
            area = _number(_get(a, "area", what, ann_path), f"{what} area", ann_path)
            iscrowd = _get(a, "iscrowd", what, ann_path)
            cid = int(_number(_get(a, "category_id", what, ann_path), f"{what} category_id",
                              ann_path))
            if cid not in cat_index:
                raise DatasetError(
                    f"{ann_path}: {what} has category_id {cid}, not in the json's categories "
                    f"{list(category_ids)}"
                )
            x1, y1 = max(0.0, x), max(0.0, y)
            x2 = min(width, x1 + max(0.0, w))
            y2 = min(height, y1 + max(0.0, h))
            example = f"{file_name} annotation {aid} bbox {bbox}"
            if not (area > 0 and x2 >= x1 and y2 >= y1):
                kind = ("dropped: area <= 0" if area <= 0
                        else "dropped: outside the image after clipping")
                warn.add(kind + " (official rule)", example)
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                warn.add("boxes clipped to the image", example)
            if x2 == x1 or y2 == y1:
                warn.add("kept zero-width/height boxes (official rule keeps them)", example)
            boxes.append((x1, y1, x2, y2))
            classes.append(cat_index[cid])
            crowd.append(bool(iscrowd))
        k = len(boxes)
        num_boxes += k
        num_crowd += sum(crowd)
        records.append(ImageRecord(
            image_path=paths.join(img_root, file_name),
            image_id=iid,
            height=int(height),
            width=int(width),
            boxes=np.asarray(boxes, np.float64).reshape(k, 4),
            classes=np.asarray(classes, np.int64).reshape(k),
            ignore=np.asarray(crowd, bool).reshape(k),
            difficult=np.zeros(k, bool),
        ))
    if check_images:
        _check_images(records, ann_path)
    info = DatasetInfo(
        records=records,
        class_names=tuple(cats[c] for c in category_ids),
        category_ids=category_ids,
        format="coco",
        source=ann_path,
        warnings=warn,
        stats={"images": len(records), "boxes": num_boxes, "crowd": num_crowd,
               "images_without_boxes": sum(len(r) == 0 for r in records)},
    )
    return _report(info)


# ---------------------------------------------------------------------------------------- VOC
def _xml_text(node: ET.Element | None, tag: str, what: str, path: str) -> str:
    child = node.find(tag) if node is not None else None
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{path}: {what} lacks <{tag}>")
    return child.text.strip()


def _xml_int(text: str, what: str, path: str) -> int:
    try:
        return int(float(text))
    except ValueError as e:
        raise DatasetError(f"{path}: {what} must be a number, got {text!r}") from e


def read_voc_xml(
    path: str, class_to_index: dict[str, int], warn: ReadWarnings
) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """One VOC xml -> ((height, width), boxes [K, 4] float64, classes [K] int64, difficult [K]).

    Coordinates `int(float(text)) - 1`, as the official `AnnotationTransform`; a missing
    <difficult> is False, as there.
    """
    try:
        root = ET.fromstring(paths.read_bytes(path))
    except ET.ParseError as e:
        raise DatasetError(f"malformed VOC xml {path!r}: {e}") from e
    except OSError as e:
        raise DatasetError(f"cannot read VOC annotation {path!r}: {e}") from e
    size = root.find("size")
    width = _xml_int(_xml_text(size, "width", "<size>", path), "<size><width>", path)
    height = _xml_int(_xml_text(size, "height", "<size>", path), "<size><height>", path)
    if width <= 0 or height <= 0:
        raise DatasetError(f"{path}: image size {width}x{height}, expected positive")
    boxes, classes, difficult = [], [], []
    for i, obj in enumerate(root.iter("object")):
        what = f"object {i}"
        name = _xml_text(obj, "name", what, path)
        if name not in class_to_index:
            raise DatasetError(
                f"{path}: {what} has class {name!r}, not among the {len(class_to_index)} class "
                f"names {list(class_to_index)[:25]} (pass class_names / config data.class_names)"
            )
        d = obj.find("difficult")
        is_difficult = False
        if d is not None and d.text is not None and d.text.strip():
            is_difficult = _xml_int(d.text.strip(), f"{what} <difficult>", path) == 1
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DatasetError(f"{path}: {what} ({name}) lacks <bndbox>")
        x1, y1, x2, y2 = (
            _xml_int(_xml_text(bnd, t, f"{what} <bndbox>", path), f"{what} <{t}>", path) - 1
            for t in ("xmin", "ymin", "xmax", "ymax")
        )
        example = f"{path} {what} [{x1 + 1}, {y1 + 1}, {x2 + 1}, {y2 + 1}] in {width}x{height}"
        if x2 <= x1 or y2 <= y1:
            warn.add("kept zero/negative-area boxes (the official keeps every box)", example)
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            warn.add("kept boxes outside the image (the official does not clip)", example)
        boxes.append((x1, y1, x2, y2))
        classes.append(class_to_index[name])
        difficult.append(is_difficult)
    k = len(boxes)
    return ((height, width), np.asarray(boxes, np.float64).reshape(k, 4),
            np.asarray(classes, np.int64).reshape(k), np.asarray(difficult, bool).reshape(k))


def read_voc(
    voc_root: str | os.PathLike,
    split: str,
    class_names: Sequence[str] | None = None,
    *,
    keep_difficult: bool = True,
    check_images: bool = True,
) -> DatasetInfo:
    """A VOC-layout folder (`Annotations/`, `JPEGImages/`, `ImageSets/Main/<split>.txt`; for
    VOCdevkit pass `VOCdevkit/VOC2007`) -> DatasetInfo in split-file order.

    class_names None: the 20 VOC classes (the official `VOC_CLASSES`). keep_difficult: see the
    module docstring.
    """
    root = os.fspath(voc_root)
    split_file = paths.join(root, "ImageSets", "Main", f"{split}.txt")
    if not paths.isfile(split_file):
        raise DatasetError(
            f"VOC split file {split_file!r} not found (expected {root}/Annotations, JPEGImages "
            "and ImageSets/Main/<split>.txt; for VOCdevkit pass VOCdevkit/VOC2007)"
        )
    ids = [line.strip() for line in paths.read_text(split_file).splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"VOC split file {split_file!r} lists no images")
    names = tuple(str(n) for n in (class_names if class_names else VOC_CLASSES))
    if len(set(names)) != len(names):
        raise DatasetError(f"class_names has duplicates: {names}")
    class_to_index = {n: i for i, n in enumerate(names)}
    warn = ReadWarnings()
    records, num_boxes, num_difficult = [], 0, 0
    for stem in ids:
        xml_path = paths.join(root, "Annotations", f"{stem}.xml")
        if not paths.isfile(xml_path):
            raise DatasetError(f"VOC annotation {xml_path!r} (listed in {split_file}) not found")
        (height, width), boxes, classes, difficult = read_voc_xml(xml_path, class_to_index, warn)
        num_boxes += len(boxes)
        num_difficult += int(difficult.sum())
        records.append(ImageRecord(
            image_path=paths.join(root, "JPEGImages", f"{stem}.jpg"),
            image_id=stem,
            height=height,
            width=width,
            boxes=boxes,
            classes=classes,
            ignore=difficult.copy() if not keep_difficult else np.zeros(len(boxes), bool),
            difficult=difficult,
        ))
    if check_images:
        _check_images(records, split_file)
    info = DatasetInfo(
        records=records,
        class_names=names,
        category_ids=tuple(range(len(names))),
        format="voc",
        source=split_file,
        warnings=warn,
        stats={"images": len(records), "boxes": num_boxes, "difficult": num_difficult,
               "images_without_boxes": sum(len(r) == 0 for r in records)},
    )
    return _report(info)


# --------------------------------------------------------------------------------------- YOLO
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_ROW_TOL = 1e-6  # normalised values this far outside [0, 1] are float noise, not errors


def load_yolo_yaml(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """A YOLO data.yaml -> (its mapping, the dataset root)."""
    import yaml

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "data.yaml")
    if not os.path.isfile(path):
        raise DatasetError(f"YOLO data.yaml {path!r} not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"malformed YOLO data.yaml {path!r}: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping (train:, val:, names:), got "
                           f"{type(data).__name__}")
    here = os.path.dirname(os.path.abspath(path))
    root = data.get("path") or here
    root = os.path.normpath(os.path.join(here, os.fspath(root)))
    return data, root


def yolo_names(data: dict[str, Any], path: str) -> tuple[str, ...]:
    """`names` (a list, or {index: name} with indices 0..C-1) checked against `nc`."""
    names = data.get("names")
    nc = data.get("nc")
    if names is None:
        if not isinstance(nc, int) or nc < 1:
            raise DatasetError(f"{path}: no 'names' (a list of class names) and no valid 'nc'")
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DatasetError(f"{path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetError(f"{path}: 'names' must be a non-empty list or dict, got {names!r}")
    names = tuple(str(n) for n in names)
    if nc is not None and nc != len(names):
        raise DatasetError(f"{path}: nc is {nc} but 'names' has {len(names)} entries")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: 'names' has duplicates: {names}")
    return names


def yolo_label_path(image_path: str) -> str:
    """`.../images/a/b.jpg` -> `.../labels/a/b.txt` (the last `images` component, as
    Ultralytics' img2label_paths); without one, the .txt beside the image."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in image_path:
        image_path = sb.join(image_path.rsplit(sa, 1))
    return os.path.splitext(image_path)[0] + ".txt"


def _yolo_images(entry: Any, root: str, where: str) -> list[str]:
    """A split entry (folder, list file, or a list of those) -> sorted image paths."""
    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    out: list[str] = []
    for e in entries:
        p = os.path.normpath(os.path.join(root, os.fspath(e)))
        if os.path.isdir(p):
            found = [os.path.join(dp, f) for dp, _, fs in os.walk(p) for f in fs
                     if os.path.splitext(f)[1].lower() in IMAGE_EXTS]
            out.extend(sorted(found))
        elif os.path.isfile(p) and p.endswith(".txt"):
            base = os.path.dirname(p)
            with open(p, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            missing = []
            for ln in lines:
                cands = [ln] if os.path.isabs(ln) else [os.path.normpath(os.path.join(base, ln)),
                                                         os.path.normpath(os.path.join(root, ln))]
                hit = next((c for c in cands if os.path.isfile(c)), None)
                if hit is None:
                    missing.append(ln)
                else:
                    out.append(hit)
            if missing:
                raise DatasetError(
                    f"{len(missing)} of {len(lines)} images listed in {p} do not exist (relative "
                    f"entries are looked up beside the list, then under {root}), e.g. "
                    + ", ".join(repr(m) for m in missing[:MAX_EXAMPLES]))
        else:
            raise DatasetError(f"{where}: {p!r} is neither an image folder nor a .txt list of "
                               "images")
    return out


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file header, after EXIF rotation (as cv2.imread applies it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read the size of image {path!r}: {e}") from e
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_yolo_labels(
    label_path: str, height: int, width: int, num_classes: int, warn: ReadWarnings
) -> tuple[np.ndarray, np.ndarray]:
    """One label file -> (boxes [K, 4] float64 x1y1x2y2 pixels, classes [K] int64); bad rows
    are counted in `warn` and dropped."""
    with open(label_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    boxes, classes = [], []
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts:
            continue
        where = f"{label_path}:{i + 1} {line.strip()[:60]!r}"
        try:
            values = [float(v) for v in parts]
        except ValueError:
            warn.add("rows with values that are not numbers (dropped)", where)
            continue
        if len(values) != 5:
            if len(values) >= 7 and len(values) % 2 == 1:  # class x1 y1 x2 y2 ... (segment)
                xs, ys = np.asarray(values[1::2]), np.asarray(values[2::2])
                values = [values[0], (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2,
                          xs.max() - xs.min(), ys.max() - ys.min()]
                warn.add("segment rows converted to their bounding box", where)
            else:
                warn.add("rows with a wrong column count (expected 5: class cx cy w h; dropped)",
                         where)
                continue
        c, cx, cy, w, h = values
        if c != int(c) or not 0 <= int(c) < num_classes:
            warn.add(f"rows with a class id not in 0..{num_classes - 1} (dropped)", where)
            continue
        if min(cx, cy, w, h) < -_ROW_TOL or max(cx, cy, w, h) > 1 + _ROW_TOL:
            warn.add("rows with values outside [0, 1] (not normalised; dropped)", where)
            continue
        if w <= 0 or h <= 0:
            warn.add("rows with zero width or height (dropped)", where)
            continue
        x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
        x2, y2 = (cx + w / 2) * width, (cy + h / 2) * height
        cx1, cy1 = max(0.0, x1), max(0.0, y1)
        cx2, cy2 = min(float(width), x2), min(float(height), y2)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            if max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > 1e-3:
                warn.add("boxes clipped to the image", where)
        boxes.append((cx1, cy1, cx2, cy2))
        classes.append(int(c))
    k = len(boxes)
    return np.asarray(boxes, np.float64).reshape(k, 4), np.asarray(classes, np.int64).reshape(k)


def read_yolo(
    yaml_path: str | os.PathLike,
    split: str = "train",
    class_names: Sequence[str] | None = None,
) -> DatasetInfo:
    """A YOLO dataset's split (a key of data.yaml: train / val / test) -> DatasetInfo, images in
    sorted path order. `yaml_path` may be the data.yaml or its folder. class_names: override the
    yaml's `names` (same count). image_id: the image path relative to the dataset root."""
    data, root = load_yolo_yaml(yaml_path)
    ypath = os.fspath(yaml_path)
    ypath = os.path.join(ypath, "data.yaml") if os.path.isdir(ypath) else ypath
    names = yolo_names(data, ypath)
    if class_names:
        if len(class_names) != len(names):
            raise DatasetError(f"{ypath}: {len(names)} classes but {len(class_names)} "
                               "class_names were given")
        names = tuple(str(n) for n in class_names)
    if not data.get(split):
        keys = [k for k in ("train", "val", "test") if data.get(k)]
        raise DatasetError(f"{ypath}: no {split!r} split (it has {keys}); expected {split}: "
                           "an image folder or a .txt list")
    paths = _yolo_images(data[split], root, f"{ypath} {split}")
    if not paths:
        raise DatasetError(f"{ypath}: the {split!r} split ({data[split]!r} under {root}) has no "
                           f"images ({', '.join(IMAGE_EXTS)})")
    return yolo_records(paths, root, names, f"{ypath}:{split}")


def yolo_records(paths: Sequence[str], root: str, names: Sequence[str],
                 source: str) -> DatasetInfo:
    """Image paths (labels at `yolo_label_path`) -> DatasetInfo; see `read_yolo`."""
    warn = ReadWarnings()
    records, num_boxes, missing = [], 0, 0
    for path in paths:
        height, width = image_size(path)
        label = yolo_label_path(path)
        if os.path.isfile(label):
            boxes, classes = read_yolo_labels(label, height, width, len(names), warn)
        else:
            missing += 1
            warn.add("images without a label file (no objects)", label)
            boxes, classes = np.zeros((0, 4), np.float64), np.zeros(0, np.int64)
        k = len(boxes)
        num_boxes += k
        rel = os.path.relpath(path, root)
        records.append(ImageRecord(
            image_path=path,
            image_id=rel.replace(os.sep, "/") if not rel.startswith("..") else path,
            height=height,
            width=width,
            boxes=boxes,
            classes=classes,
            ignore=np.zeros(k, bool),
            difficult=np.zeros(k, bool),
        ))
    info = DatasetInfo(
        records=records,
        class_names=tuple(names),
        category_ids=tuple(range(len(names))),
        format="yolo",
        source=source,
        warnings=warn,
        stats={"images": len(records), "boxes": num_boxes, "missing_labels": missing,
               "images_without_boxes": sum(len(r) == 0 for r in records)},
    )
    return _report(info)
