"""Fine-tuning through `yolox-jax train` on a YOLO-format dataset: a few raccoon images (copied to
tmp in the YOLO layout with `yolox-jax convert-dataset`), the official Nano weights, two steps at
64x64, then the evaluation of the YOLO val split (COCO-scored), the exported weights and the
training curves picture."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import REPO, need_shared
from test_cli import assert_png

from yolox_jax.cli import main

pytestmark = pytest.mark.slow


def test_finetune_on_yolo_raccoon(tmp_path, capsys):
    voc = need_shared("data/voc_raccoon")
    pth = need_shared("data/weights/yolox_nano.pth")
    # a VOC copy with 8 train / 4 val images, then YOLO from it
    small = tmp_path / "voc_small"
    (small / "ImageSets" / "Main").mkdir(parents=True)
    for split, n in (("train", 8), ("test", 4)):
        ids = (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        (small / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for folder, ext in (("Annotations", "xml"), ("JPEGImages", "jpg")):
            (small / folder).mkdir(exist_ok=True)
            for i in ids:
                os.symlink(voc / folder / f"{i}.{ext}", small / folder / f"{i}.{ext}")
    yolo = tmp_path / "yolo"
    assert main(["convert-dataset", "voc", str(small), "yolo", str(yolo), "--class-names",
                 "raccoon", "--splits", "train,test:val"]) == 0
    assert len(list((yolo / "labels" / "train").glob("*.txt"))) == 8
    workdir = tmp_path / "run"
    os.environ["YOLOX_JAX_COMPILATION_CACHE"] = str(tmp_path / "jax_cache")
    argv = ["train", "--config", str(REPO / "configs" / "yolox_nano.py"),
            "--workdir", str(workdir),
            "--config.data.format=yolo", f"--config.data.yaml={yolo / 'data.yaml'}",
            "--config.model.num_classes=1", f"--config.train.init_from={pth}",
            "--config.data.input_size=(64,64)", "--config.data.test_size=(64,64)",
            "--config.data.random_size=(2,2)", "--config.data.num_workers=0",
            "--config.train.batch_size=4", "--config.train.max_epoch=1",
            "--config.train.iters_per_epoch=2", "--config.train.warmup_epochs=0",
            "--config.train.no_aug_epochs=0", "--config.train.print_interval=1",
            "--config.train.eval_interval=1", "--config.test.conf=0.001"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "init_from" in out and "re-initialised" in out  # 80 -> 1 class head
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["total"]) for r in train)
    (ev,) = [r for r in rows if r["kind"] == "eval"]
    assert 0.0 <= ev["AP50"] <= 1.0 and ev["num_images"] == 4  # the val split, COCO-scored
    from yolox_jax.eval.evaluator import Evaluator
    from yolox_jax.weights.checkpoint import load_checkpoint

    model, variables, config = load_checkpoint(workdir / "final")
    assert model.num_classes == 1 and config.data.format == "yolo"
    gt = Evaluator(model, config).coco_gt.dataset  # what the run's evaluation scored against
    assert len(gt["images"]) == 4 and gt["categories"] == [{"id": 0, "name": "raccoon"}]
    assert np.isfinite(np.asarray(variables["params"]["head"]["cls_preds.0"]["bias"])).all()
    assert_png(workdir / "results.png", 500)  # written by the trainer at the end of the run
    (workdir / "results.png").unlink()
    assert main(["plot", str(workdir)]) == 0
    assert_png(workdir / "results.png", 500)
