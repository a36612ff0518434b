"""Write a read dataset (readers.DatasetInfo) as COCO json, Pascal VOC xml or YOLO txt.

The boxes written are the records' (what the model trains on): x1y1x2y2 float pixels. Each
format's convention is applied on the way out and undone by its reader, so
VOC -> COCO -> YOLO -> VOC gives the same integer boxes back:

* COCO: bbox [x1, y1, x2 - x1, y2 - y1], area w * h, iscrowd = the record's ignore flag; category
  ids: a COCO source's own, else 1..C. Written to `OUT/annotations/<split>.json`, images to
  `OUT/<split>/` (read back with `read_coco(OUT, "<split>.json", "<split>")`).
* VOC: the 1-based integers the VOC reader subtracts 1 from (round(x + 1)), `difficult` kept;
  `OUT/JPEGImages/<stem>.jpg` (other formats re-encoded as JPEG), `OUT/Annotations/<stem>.xml`,
  `OUT/ImageSets/Main/<split>.txt`.
* YOLO: `class cx cy w h` normalised, 6 decimals, boxes clipped to the image, ignored (crowd)
  and empty boxes left out (counted); `OUT/images/<split>/`, `OUT/labels/<split>/`,
  `OUT/data.yaml` (splits merged with an existing one, same names required).

Images are copied (`link=True`: symlinked). Writing into an existing output adds the split.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from yolox_jax.data.readers import DatasetError, DatasetInfo, ImageRecord


@dataclass
class WriteReport:
    """What a write left out or changed, counted (printed by the CLI)."""

    images: int = 0
    boxes: int = 0
    notes: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        if n:
            self.notes[kind] = self.notes.get(kind, 0) + n

    def summary(self) -> str:
        extra = "".join(f", {k}: {v}" for k, v in sorted(self.notes.items()))
        return f"{self.images} images, {self.boxes} boxes{extra}"


def _place_image(src: str, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link:
        dst.symlink_to(os.path.abspath(src))
    else:
        shutil.copy2(src, dst)


def _unique_names(records: Sequence[ImageRecord], what: str) -> list[str]:
    names = [os.path.basename(r.image_path) for r in records]
    seen: dict[str, str] = {}
    for n, r in zip(names, records, strict=True):
        key = os.path.splitext(n)[0]
        if key in seen and seen[key] != r.image_path:
            raise DatasetError(f"{what}: two images would be written as {key!r}: {seen[key]!r} "
                               f"and {r.image_path!r} (file names must be unique per split)")
        seen[key] = r.image_path
    return names


# ---------------------------------------------------------------------------------- COCO
def coco_json(info: DatasetInfo, file_names: Sequence[str] | None = None,
              image_ids: Sequence[int] | None = None,
              category_ids: Sequence[int] | None = None) -> dict:
    """Records -> a COCO detection json (dict). file_names: default the images' base names;
    image_ids: default the records' int ids, else 1..N; category_ids: default a COCO source's
    own, else 1..C. bbox [x1, y1, x2 - x1, y2 - y1], area w * h, iscrowd = ignore."""
    if file_names is None:
        file_names = [os.path.basename(r.image_path) for r in info.records]
    if image_ids is None:
        image_ids = [r.image_id if isinstance(r.image_id, int) else i + 1
                     for i, r in enumerate(info.records)]
    if category_ids is None:
        category_ids = info.category_ids if info.format == "coco" else tuple(
            range(1, len(info.class_names) + 1))
    images, anns = [], []
    for rec, name, iid in zip(info.records, file_names, image_ids, strict=True):
        images.append({"id": int(iid), "file_name": name, "width": int(rec.width),
                       "height": int(rec.height)})
        for box, cls, ign in zip(rec.boxes, rec.classes, rec.ignore, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": int(iid),
                         "category_id": int(category_ids[int(cls)]), "bbox": [x1, y1, w, h],
                         "area": max(w, 0.0) * max(h, 0.0), "iscrowd": int(bool(ign))})
    cats = [{"id": int(c), "name": n}
            for c, n in zip(category_ids, info.class_names, strict=True)]
    return {"images": images, "annotations": anns, "categories": cats}


def write_coco(info: DatasetInfo, out_dir: str | os.PathLike, split: str,
               link: bool = False) -> tuple[Path, WriteReport]:
    """-> (the json path, report)."""
    out = Path(out_dir)
    report = WriteReport()
    names = _unique_names(info.records, str(out))
    data = coco_json(info, names)
    for rec, name in zip(info.records, names, strict=True):
        _place_image(rec.image_path, out / split / name, link)
        report.images += 1
    report.boxes = len(data["annotations"])
    path = out / "annotations" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path, report


# ----------------------------------------------------------------------------------- VOC
def write_voc(info: DatasetInfo, out_dir: str | os.PathLike, split: str,
              link: bool = False) -> tuple[Path, WriteReport]:
    """-> (the split file, report)."""
    import cv2

    from yolox_jax.data.io import read_image

    out = Path(out_dir)
    report = WriteReport()
    names = _unique_names(info.records, str(out))
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    stems = []
    for rec, name in zip(info.records, names, strict=True):
        stem = os.path.splitext(name)[0]
        stems.append(stem)
        target = out / "JPEGImages" / f"{stem}.jpg"
        if os.path.splitext(name)[1].lower() in (".jpg", ".jpeg"):
            _place_image(rec.image_path, target, link)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), read_image(rec.image_path),
                               [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise DatasetError(f"could not write {target}")
            report.add("images re-encoded as JPEG (VOC needs .jpg)")
        objs = []
        for box, cls, diff in zip(rec.boxes, rec.classes, rec.difficult, strict=True):
            x1, y1, x2, y2 = (int(round(float(v) + 1)) for v in box)
            if not np.allclose(box + 1, (x1, y1, x2, y2), atol=1e-6):
                report.add("boxes rounded to integer pixels")
            objs.append(
                f"  <object>\n    <name>{escape(info.class_names[int(cls)])}</name>\n"
                f"    <difficult>{int(bool(diff))}</difficult>\n    <bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>\n  </object>\n")
        report.boxes += len(objs)
        (out / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation>\n  <filename>{escape(stem)}.jpg</filename>\n  <size><width>"
            f"{rec.width}</width><height>{rec.height}</height><depth>3</depth></size>\n"
            + "".join(objs) + "</annotation>\n")
        report.images += 1
    split_file = out / "ImageSets" / "Main" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(stems) + "\n")
    return split_file, report


# ---------------------------------------------------------------------------------- YOLO
def yolo_rows(rec: ImageRecord, report: WriteReport) -> list[str]:
    """One record -> its label rows `class cx cy w h` (normalised, clipped)."""
    rows = []
    for box, cls, ign in zip(rec.boxes, rec.classes, rec.ignore, strict=True):
        if ign:
            report.add("ignored (crowd) boxes left out")
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        c = (max(0.0, x1), max(0.0, y1), min(float(rec.width), x2), min(float(rec.height), y2))
        if c != (x1, y1, x2, y2):
            report.add("boxes clipped to the image")
        x1, y1, x2, y2 = c
        if x2 <= x1 or y2 <= y1:
            report.add("empty boxes left out")
            continue
        cx, cy = (x1 + x2) / 2 / rec.width, (y1 + y2) / 2 / rec.height
        w, h = (x2 - x1) / rec.width, (y2 - y1) / rec.height
        rows.append(f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return rows


def write_yolo(info: DatasetInfo, out_dir: str | os.PathLike, split: str,
               link: bool = False) -> tuple[Path, WriteReport]:
    """-> (data.yaml, report)."""
    import yaml

    out = Path(out_dir)
    report = WriteReport()
    names = _unique_names(info.records, str(out))
    for rec, name in zip(info.records, names, strict=True):
        _place_image(rec.image_path, out / "images" / split / name, link)
        rows = yolo_rows(rec, report)
        label = out / "labels" / split / (os.path.splitext(name)[0] + ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(r + "\n" for r in rows))
        report.images += 1
        report.boxes += len(rows)
    path = out / "data.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    old = data.get("names")
    if old is not None and list(old) != list(info.class_names):
        raise DatasetError(f"{path} already has names {old}, not {list(info.class_names)}")
    data.update({split: f"images/{split}", "names": list(info.class_names)})
    data = {"names": data.pop("names"), **data}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, report


WRITERS = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}
