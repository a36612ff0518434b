"""`yolox-jax convert-dataset`: a dataset between Pascal VOC, COCO json and YOLO txt.

    yolox-jax convert-dataset voc VOCdevkit/VOC2007 yolo out/ --splits trainval:train,test:val
    yolox-jax convert-dataset yolo data.yaml coco out/ --splits train,val
    yolox-jax convert-dataset coco COCO/ voc out/ --ann instances_val2017.json --splits val2017:test

FROM SRC TO OUT. SRC: the VOC root (Annotations/, JPEGImages/, ImageSets/Main/), the COCO
root (with `--ann`, and `--images` unless the json name says train2017 / val2017 ...), or the
YOLO data.yaml (or its folder). `--splits IN[:OUT],...` names the splits to convert and what to
call them in OUT (default: VOC trainval/train/val/test that exist, the data.yaml's
train/val/test, COCO the json's split name). The boxes are the readers' (what training uses),
written in each format's convention, so VOC -> COCO -> YOLO -> VOC gives the same boxes back;
see `yolox_jax.data.writers`. Images are copied (`--link`: symlinked).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag

FORMATS = ("voc", "coco", "yolo")


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src_format", choices=FORMATS, metavar="FROM", help="voc, coco or yolo")
    p.add_argument("src", metavar="SRC", help="the source dataset (see above)")
    p.add_argument("dst_format", choices=FORMATS, metavar="TO", help="voc, coco or yolo")
    p.add_argument("out", metavar="OUT", help="output folder (an existing one gets the splits)")
    p.add_argument("--splits", default=None, help="IN[:OUT],... (default: see above)")
    p.add_argument("--ann", default=None, help="COCO: the annotation json (under SRC)")
    p.add_argument("--images", default=None, help="COCO: the image folder (under SRC)")
    p.add_argument("--class-names", default=None,
                   help="VOC: comma-separated class names (default: the 20 VOC classes); "
                        "YOLO: replaces data.yaml's names")
    p.add_argument("--link", action="store_true", help="symlink the images instead of copying")
    add_debug_flag(p)
    return p


def _splits(text: str | None, default: Sequence[str]) -> list[tuple[str, str]]:
    items = [s.strip() for s in text.split(",")] if text else list(default)
    out = []
    for item in items:
        src, _, dst = item.partition(":")
        if not src:
            raise errors.UsageError(f"--splits: empty split name in {text!r}")
        out.append((src, dst or src))
    if not out:
        raise errors.UsageError("no split to convert")
    return out


def _main(argv: list[str], prog: str) -> int:
    args = make_parser(prog).parse_args(argv)
    from yolox_jax.data import readers
    from yolox_jax.data.writers import WRITERS

    names = tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else None
    if args.src_format == "voc":
        main_dir = os.path.join(args.src, "ImageSets", "Main")
        default = [s for s in ("trainval", "train", "val", "test")
                   if os.path.isfile(os.path.join(main_dir, f"{s}.txt"))]
        read = lambda s: readers.read_voc(args.src, s, names)
    elif args.src_format == "yolo":
        data, _ = readers.load_yolo_yaml(args.src)
        default = [s for s in ("train", "val", "test") if data.get(s)]
        read = lambda s: readers.read_yolo(args.src, s, names)
    else:
        if args.ann is None:
            raise errors.UsageError("coco: give --ann (the annotation json under SRC)")
        default = [readers.split_name(args.ann) or "train"]
        read = lambda s: readers.read_coco(args.src, args.ann, args.images)
    pairs = _splits(args.splits, default)
    if args.src_format == "coco" and len(pairs) != 1:
        raise errors.UsageError("coco: one split per --ann (run once per annotation json)")
    write = WRITERS[args.dst_format]
    for src_split, dst_split in pairs:
        info = read(src_split)
        path, report = write(info, args.out, dst_split, link=args.link)
        print(f"{info.source} -> {path}: {report.summary()}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax convert-dataset") -> int:
    return errors.run(lambda a: _main(a, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
