"""Look at what the network is trained on: a grid of augmented training samples with their boxes.

    yolox-jax preview --config configs/yolox_nano.py --yaml my_data/data.yaml --out grid.jpg
    python -m yolox_jax.data.preview --config configs/yolox_nano.py \
        --data-dir ../shared/data/voc_raccoon --voc-split train --class-names raccoon \
        --out grid.jpg [--n 16] [--epoch 0] [--seed 0]
    python -m yolox_jax.data.preview --config configs/yolox_s.py \
        --data-dir ../shared/data/coco_subset --ann instances_val2017_subset.json --images val2017

The samples are the first `n` of `epoch` exactly as `TrainLoader` makes them for training (same
seed, same augmentation settings from the config; `--epoch` past max_epoch - no_aug_epochs shows
the no-mosaic epochs). The dataset comes from the config (`--config.data.format`, `data_dir`,
`train_ann`, `train_images`, `voc_train_split`, `class_names`) or from the shortcuts `--data-dir`,
`--ann` / `--images` (COCO), `--voc-split` / `--class-names` (VOC) and `--yaml` (YOLO), which
override it. The command line lives in `yolox_jax.cli.preview`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from yolox_jax.visualize import class_color

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


def preview(config, n: int, epoch: int, seed: int, tile: int = 0) -> tuple[np.ndarray, dict]:
    """-> (grid image, the batch statistics) for the first `n` samples of `epoch`."""
    from yolox_jax.data.datasets import read_split
    from yolox_jax.data.pipeline import TrainLoader

    info = read_split(config, "train")
    t = config.train
    with TrainLoader(info.records, config.data, n, seed=seed, no_aug_epochs=int(t.no_aug_epochs),
                     max_epoch=max(int(t.max_epoch), epoch + 1), num_workers=0,
                     process_index=0, process_count=1) as loader:
        batch = next(iter(loader.epoch(epoch)))
    tiles = [draw_labels(img, lab, info.class_names)
             for img, lab in zip(batch.images, batch.labels, strict=True)]
    return make_grid(tiles, tile), batch.stats


if __name__ == "__main__":
    import sys

    from yolox_jax.cli.preview import main

    sys.exit(main(prog="python -m yolox_jax.data.preview"))

