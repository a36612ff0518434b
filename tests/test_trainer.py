"""The training loop end to end on a tiny synthetic VOC dataset: exact resume, NaN stop with the
last good checkpoint intact, SIGTERM saves and exits, fine-tuning from another class count."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from yolox_jax.config import variant_config
from yolox_jax.train import trainer
from yolox_jax.train.checkpointing import TrainCheckpointer

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
    os.environ["YOLOX_JAX_COMPILATION_CACHE"] = str(cache_dir)
    return c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    return write_voc(root / "tiny"), root / "jax_cache"


def _losses(workdir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["total"]) for r in rows if r["kind"] == "train"]


def _no_eval(model, variables, config):
    return {}


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    data, cache = dataset
    workdir = tmp_path_factory.mktemp("run") / "full"
    summary = trainer.train(tiny_config(data, cache), workdir, evaluate_fn=_no_eval)
    return workdir, summary


def test_full_run_writes_logs_checkpoints_and_export(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["step"] == 6 and summary["epoch"] == 3  # 8 images / batch 4 x 3 epochs
    losses = _losses(workdir)
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(v) for _, v in losses)
    assert (workdir / "final" / "config.json").exists()
    assert list((workdir / "tensorboard").glob("events.*"))
    from yolox_jax.weights.checkpoint import load_checkpoint

    model, variables, config = load_checkpoint(workdir / "final")
    assert model.num_classes == 2
    out = model.apply(variables, np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert out.shape == (1, 84, 7) and np.isfinite(np.asarray(out)).all()


def test_stop_and_resume_reproduces_the_uninterrupted_run(dataset, uninterrupted, tmp_path):
    data, cache = dataset
    full_dir, full = uninterrupted
    workdir = tmp_path / "resumed"
    config = tiny_config(data, cache)
    first = trainer.train(config, workdir, evaluate_fn=_no_eval, max_steps=3)  # mid-epoch 2
    assert first["step"] == 3 and first["next_batch"] == 1
    second = trainer.train(config, workdir, evaluate_fn=_no_eval)
    assert second["step"] == 6 and second["steps_run"] == 3
    assert _losses(workdir) == _losses(full_dir)
    for a, b in zip(jax.tree.leaves(second["state"].params),
                    jax.tree.leaves(full["state"].params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(second["state"].ema),
                    jax.tree.leaves(full["state"].ema), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    data, cache = dataset
    from yolox_jax.train import step as step_mod

    real = step_mod.make_train_step

    def poisoned(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(state, images, labels, use_l1, size):
            new_state, metrics = fn(state, images, labels, use_l1=use_l1, size=size)
            if int(new_state.step) == 3:
                metrics = dict(metrics, total=metrics["total"] * np.nan)
            return new_state, metrics

        return wrapped

    monkeypatch.setattr(step_mod, "make_train_step", poisoned)
    workdir = tmp_path / "nan"
    with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite loss nan at step 3") as e:
        trainer.train(tiny_config(data, cache), workdir, evaluate_fn=_no_eval)
    assert "(step 2) is intact" in str(e.value)
    ckpt = TrainCheckpointer(workdir)
    assert ckpt.latest_step() == 2
    ckpt.close()
    from yolox_jax.train.checkpointing import load_inference_variables

    variables, _ = load_inference_variables(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_sigterm_saves_at_the_exact_position_and_exits(dataset, tmp_path, monkeypatch):
    data, cache = dataset
    from yolox_jax.train import step as step_mod

    real = step_mod.make_train_step

    def signalling(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(state, images, labels, use_l1, size):
            out = fn(state, images, labels, use_l1=use_l1, size=size)
            if int(out[0].step) == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return wrapped

    monkeypatch.setattr(step_mod, "make_train_step", signalling)
    workdir = tmp_path / "term"
    summary = trainer.train(tiny_config(data, cache), workdir, evaluate_fn=_no_eval)
    assert summary["stopped_by_signal"] == signal.SIGTERM
    assert summary["step"] == 1 and summary["next_batch"] == 1
    ckpt = TrainCheckpointer(workdir)
    assert ckpt.latest_step() == 1
    ckpt.close()


def test_init_from_with_other_classes_reinitialises_only_the_class_head(
        dataset, uninterrupted, tmp_path, capsys):
    data, cache = dataset
    src, _ = uninterrupted
    config = tiny_config(data, cache)
    config.model.num_classes = 3
    config.data.class_names = ("box", "disc", "other")
    from yolox_jax.models.yolox import build_model, init_variables

    model = build_model(config)
    fresh = init_variables(model, jax.random.key(1), (SIZE, SIZE))
    merged = trainer.init_variables_from(model, fresh, str(src / "final"), config)
    msg = capsys.readouterr().out
    assert "re-initialised 6 tensors" in msg and "cls_preds" in msg
    from yolox_jax.weights.checkpoint import load_checkpoint

    _, loaded, _ = load_checkpoint(src / "final")
    stem = merged["params"]["backbone"]
    np.testing.assert_array_equal(
        jax.tree.leaves(stem)[0], jax.tree.leaves(loaded["params"]["backbone"])[0])
    assert merged["params"]["head"]["cls_preds.0"]["bias"].shape == (3,)
