"""A tiny synthetic VOC dataset, the trainer config the trainer tests run on (64x64 nano), and
the helpers those tests share (losses from metrics.jsonl, a no-op evaluation, a step wrapper)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from yolox_jax.config import variant_config

SIZE = 64


def write_voc(root: Path, n: int = 8, classes=("box", "disc"), seed: int = 0) -> Path:
    """n synthetic images (filled rectangles / discs on noise) with VOC xml annotations."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    names = []
    for i in range(n):
        h, w = int(rng.integers(56, 96)), int(rng.integers(56, 96))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        objs = []
        for _ in range(int(rng.integers(1, 3))):
            c = int(rng.integers(0, len(classes)))
            x1, y1 = int(rng.integers(0, w - 24)), int(rng.integers(0, h - 24))
            x2, y2 = x1 + int(rng.integers(12, 24)), y1 + int(rng.integers(12, 24))
            color = (255, 255, 255) if c == 0 else (0, 200, 255)
            cv2.rectangle(img, (x1, y1), (x2, y2), color, -1)
            objs.append(
                f"<object><name>{classes[c]}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax>"
                f"<ymax>{y2 + 1}</ymax></bndbox></object>"
            )
        name = f"img{i:03d}"
        names.append(name)
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), img)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{''.join(objs)}</annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names[:4]) + "\n")
    return root


def tiny_config(data_dir: Path, cache_dir: Path):
    c = variant_config("yolox_nano")
    c.model.num_classes = 2
    c.data.format = "voc"
    c.data.data_dir = str(data_dir)
    c.data.voc_train_split = "train"
    c.data.voc_val_split = "test"
    c.data.class_names = ("box", "disc")
    c.data.input_size = (SIZE, SIZE)
    c.data.test_size = (SIZE, SIZE)
    c.data.random_size = (2, 2)  # multi-scale draws from {64}: one compiled shape
    c.data.num_workers = 0
    c.data.max_labels = 8
    c.train.batch_size = 4
    c.train.max_epoch = 3  # warm-up, cosine, no-aug: one epoch each
    c.train.warmup_epochs = 1
    c.train.no_aug_epochs = 1
    c.train.eval_interval = 100
    c.train.print_interval = 1
    c.train.compilation_cache = True
    c.train.plot = False  # matplotlib costs ~1 s per run; test_finetune_yolo checks the plot
    os.environ["YOLOX_JAX_COMPILATION_CACHE"] = str(cache_dir)
    return c


def losses_of(workdir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["total"]) for r in rows if r["kind"] == "train"]


def no_eval(model, variables, config):
    return {}


def wrap_step(monkeypatch, after_step):
    """Patch the trainer's train step so that `after_step(k, state, metrics, mesh)` (k: the
    1-based step this process dispatched) can change what each step returns."""
    from yolox_jax.train import step as step_mod

    real = step_mod.make_train_step

    def patched(model, tx, schedule, mesh, **kwargs):
        fn = real(model, tx, schedule, mesh, **kwargs)
        count = [0]

        def wrapped(state, images, labels, use_l1, size):
            count[0] += 1
            new_state, metrics = fn(state, images, labels, use_l1=use_l1, size=size)
            return after_step(count[0], new_state, metrics, mesh)

        wrapped.lower = fn.lower
        return wrapped

    monkeypatch.setattr(step_mod, "make_train_step", patched)
