"""`yolox-jax preview` (= `python -m yolox_jax.data.preview`): a grid of augmented training
samples with their boxes, exactly as the training pipeline makes them.

    yolox-jax preview --config configs/yolox_nano.py --data-dir ../shared/data/voc_raccoon \
        --voc-split train --class-names raccoon --out grid.jpg [--n 16] [--epoch 0] [--seed 0]
    yolox-jax preview --config configs/yolox_nano.py --yaml my_data/data.yaml --out grid.jpg

The dataset comes from the config (`--config.data.*` overrides) or from the shortcuts, which
override it: `--data-dir`, `--ann` / `--images` (COCO), `--voc-split` / `--class-names` (VOC),
`--yaml` (YOLO). Underscored spellings (`--data_dir`) are accepted as before.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag, parse_config_args


def make_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="FILE",
                   help="configs/yolox_*.py; --config.KEY=VALUE overrides any of its values")
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                   help="dataset root (overrides config.data.data_dir)")
    p.add_argument("--ann", default=None, help="COCO annotation json (sets format=coco, train_ann)")
    p.add_argument("--images", default=None, help="COCO image folder name (train_images)")
    p.add_argument("--voc-split", "--voc_split", dest="voc_split", default=None,
                   help="VOC split, e.g. trainval (sets format=voc)")
    p.add_argument("--yaml", default=None, help="YOLO data.yaml (sets format=yolo)")
    p.add_argument("--class-names", "--class_names", dest="class_names", default=None,
                   help="class names, comma separated")
    p.add_argument("--out", default="preview.jpg", help="output image (.jpg / .png)")
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--epoch", type=int, default=0, help="0-based training epoch to show")
    p.add_argument("--seed", type=int, default=None, help="seed (default: config.seed)")
    p.add_argument("--tile", type=int, default=0, help="tile side in pixels (0: the input size)")
    add_debug_flag(p)
    return p


def _main(argv: list[str], prog: str) -> int:
    config, rest = parse_config_args(argv, required=False)
    parser = make_parser(prog)
    if config is None:
        parser.parse_args(rest)  # says that --config is required (or prints --help)
    args = parser.parse_args([*rest, "--config", "given"])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    d = config.data
    if args.data_dir:
        d.data_dir = args.data_dir
    if args.voc_split:
        d.format, d.voc_train_split = "voc", args.voc_split
    if args.ann:
        d.format, d.train_ann = "coco", args.ann
    if args.images:
        d.train_images = args.images
    if args.yaml:
        d.format, d.yaml = "yolo", args.yaml
    if args.class_names:
        d.class_names = tuple(n.strip() for n in args.class_names.split(","))
    if not d.data_dir and not (d.format == "yolo" and d.yaml):
        raise errors.UsageError("no dataset: pass --data-dir (and --ann or --voc-split), --yaml, "
                                "or --config.data.data_dir=...")
    if args.n <= 0:
        raise errors.UsageError(f"--n must be positive, got {args.n}")
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    from yolox_jax.config import validate_config
    from yolox_jax.data.preview import preview

    if tuple(d.class_names) and len(d.class_names) != config.model.num_classes:
        config.model.num_classes = len(d.class_names)  # a preview trains nothing
    validate_config(config)
    seed = int(config.seed if args.seed is None else args.seed)
    grid, stats = preview(config, args.n, args.epoch, seed, args.tile)
    out = os.fspath(args.out)
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    import cv2

    if not cv2.imwrite(out, grid):
        raise errors.UsageError(f"could not write {out!r} (unknown extension or not writable)")
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}): {stats['samples']} samples, "
          f"{stats['mosaic']} mosaic, {stats['mixup']} mixup, {stats['num_labels']} boxes, epoch "
          f"{args.epoch + 1}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax preview") -> int:
    return errors.run(lambda a: _main(a, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
