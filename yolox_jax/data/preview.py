"""Look at what the network is trained on: a grid of augmented training samples with their boxes.

    python -m yolox_jax.data.preview --config configs/yolox_nano.py \
        --data-dir ../shared/data/voc_raccoon --voc-split train --class-names raccoon \
        --out grid.jpg [--n 16] [--epoch 0] [--seed 0]
    python -m yolox_jax.data.preview --config configs/yolox_s.py \
        --data-dir ../shared/data/coco_subset --ann instances_val2017_subset.json --images val2017

The samples are the first `n` of `epoch` exactly as `TrainLoader` makes them for training (same
seed, same augmentation settings from the config; `--epoch` past max_epoch - no_aug_epochs shows
the no-mosaic epochs). The dataset comes from the config (`--config.data.format`, `data_dir`,
`train_ann`, `train_images`, `voc_train_split`, `class_names`) or from the shortcuts `--data-dir`,
`--ann` / `--images` (COCO) and `--voc-split` / `--class-names` (VOC), which override it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence

import cv2
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from yolox_jax.visualize import class_color

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/yolox_*.py", lock_config=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "dataset root (overrides config.data.data_dir)")
_ANN = flags.DEFINE_string("ann", None, "COCO annotation json (sets format=coco, train_ann)")
_IMAGES = flags.DEFINE_string("images", None, "COCO image folder name (train_images)")
_VOC_SPLIT = flags.DEFINE_string("voc_split", None, "VOC split, e.g. trainval (sets format=voc)")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "class names (VOC), comma separated")
_OUT = flags.DEFINE_string("out", "preview.jpg", "output image (.jpg / .png)")
_N = flags.DEFINE_integer("n", 16, "number of samples")
_EPOCH = flags.DEFINE_integer("epoch", 0, "0-based training epoch to show")
_SEED = flags.DEFINE_integer("seed", None, "seed (default: config.seed)")
_TILE = flags.DEFINE_integer("tile", 0, "tile side in pixels (0: the input size)")

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_labels(img: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Draw padded labels [G, 5] (class, cx, cy, w, h; zero rows skipped) on a copy of `img`."""
    out = np.ascontiguousarray(img).copy()
    for cls, cx, cy, w, h in np.asarray(labels, np.float64):
        if w <= 0 or h <= 0:
            continue
        k = int(cls)
        color = (class_color(k) * 255).astype(np.uint8).tolist()
        p1 = (int(cx - w / 2), int(cy - h / 2))
        cv2.rectangle(out, p1, (int(cx + w / 2), int(cy + h / 2)), color, 1)
        name = class_names[k] if 0 <= k < len(class_names) else str(k)
        cv2.putText(out, name, (p1[0], max(p1[1] - 2, 8)), _FONT, 0.35, color, 1, cv2.LINE_AA)
    return out


def make_grid(tiles: Sequence[np.ndarray], tile: int = 0, gap: int = 4) -> np.ndarray:
    """Tiles [h, w, 3] uint8 -> one image, ceil(sqrt(n)) columns, white gaps."""
    if not tiles:
        raise ValueError("no samples to draw")
    if tile:
        tiles = [cv2.resize(t, (tile, round(t.shape[0] * tile / t.shape[1])),
                            interpolation=cv2.INTER_AREA) for t in tiles]
    th, tw = tiles[0].shape[:2]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        grid[y : y + th, x : x + tw] = t
    return grid


def preview(config, n: int, epoch: int, seed: int) -> tuple[np.ndarray, dict]:
    """-> (grid image, the batch statistics) for the first `n` samples of `epoch`."""
    from yolox_jax.data.pipeline import TrainLoader
    from yolox_jax.train.trainer import read_train_records

    info = read_train_records(config)
    t = config.train
    with TrainLoader(info.records, config.data, n, seed=seed, no_aug_epochs=int(t.no_aug_epochs),
                     max_epoch=max(int(t.max_epoch), epoch + 1), num_workers=0,
                     process_index=0, process_count=1) as loader:
        batch = next(iter(loader.epoch(epoch)))
    tiles = [draw_labels(img, lab, info.class_names)
             for img, lab in zip(batch.images, batch.labels, strict=True)]
    return make_grid(tiles, _TILE.value), batch.stats


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = _CONFIG.value
    d = config.data
    if _DATA_DIR.value:
        d.data_dir = _DATA_DIR.value
    if _VOC_SPLIT.value:
        d.format, d.voc_train_split = "voc", _VOC_SPLIT.value
    if _ANN.value:
        d.format, d.train_ann = "coco", _ANN.value
    if _IMAGES.value:
        d.train_images = _IMAGES.value
    if _CLASS_NAMES.value:
        d.class_names = tuple(_CLASS_NAMES.value)
    if not d.data_dir:
        raise app.UsageError("no dataset: pass --data-dir (and --ann or --voc-split) or "
                             "--config.data.data_dir=...")
    if _N.value <= 0:
        raise app.UsageError(f"--n must be positive, got {_N.value}")
    seed = int(config.seed if _SEED.value is None else _SEED.value)
    grid, stats = preview(config, _N.value, _EPOCH.value, seed)
    out = os.fspath(_OUT.value)
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    if not cv2.imwrite(out, grid):
        print(f"error: could not write {out!r} (unknown extension or not writable)",
              file=sys.stderr)
        return 2
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}): {stats['samples']} samples, "
          f"{stats['mosaic']} mosaic, {stats['mixup']} mixup, {stats['num_labels']} boxes, epoch "
          f"{_EPOCH.value + 1}")
    return 0


def _dashes_to_underscores(argv: Sequence[str]) -> list[str]:
    """Accept `--data-dir x` as well as absl's `--data_dir x` (config overrides untouched)."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("--config"):
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, argv=_dashes_to_underscores(sys.argv))
