"""Fine-tune the official YOLOX-Nano COCO weights on the raccoon dataset (VOC layout, 1 class).

The recipe of the official reference run in `shared/data/README.md`: 416, batch 8,
lr 0.01 / 64 x 8, yoloxwarmcos with 1 warm-up and 2 no-aug epochs, 30 epochs, EMA, mosaic 0.5, no
mixup, the class head re-initialised (80 -> 1 classes). One change for CPUs: a fixed 416 input
(no multi-scale), since every new size is a new XLA compilation. `data.data_dir` and
`train.init_from` default to the asset cache that `python -m yolox_jax.assets fetch voc_raccoon
yolox_nano` fills; override them with `--config.data.data_dir=...`.
"""

import os
from pathlib import Path

from yolox_jax.config import variant_config


def get_config():
    c = variant_config("yolox_nano")
    c.name = "yolox_nano"
    home = Path(os.environ.get("YOLOX_JAX_HOME", Path.home() / ".cache" / "yolox_jax"))
    c.model.num_classes = 1
    c.data.format = "voc"
    c.data.data_dir = str(home / "voc_raccoon")
    c.data.voc_train_split = "train"
    c.data.voc_val_split = "test"
    c.data.class_names = ("raccoon",)
    c.data.random_size = (13, 13)  # fixed 416
    c.data.num_workers = 0
    c.train.batch_size = 8
    c.train.max_epoch = 30
    c.train.warmup_epochs = 1
    c.train.no_aug_epochs = 2
    c.train.eval_interval = 5
    c.train.eval_at_start = True
    c.train.print_interval = 5
    c.train.init_from = str(home / "yolox_nano.pth")
    c.test.conf = 0.001
    return c
