"""The training loop end to end on a tiny synthetic VOC dataset: exact resume, NaN stop (read one
step late) with the last good checkpoint intact, SIGTERM saves and exits, save every N steps,
fine-tuning from another class count. No per-step blocking read and the multi-scale programs
compiled up front: tests/test_trainer_async.py. Multi-process runs and SIGKILL during a save:
tests/test_trainer_processes.py."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest
from tiny_voc import SIZE, losses_of, no_eval, tiny_config, wrap_step, write_voc

from yolox_jax.train import trainer
from yolox_jax.train.checkpointing import TrainCheckpointer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, jax_cache):
    root = tmp_path_factory.mktemp("voc")
    return write_voc(root / "tiny"), jax_cache


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    data, cache = dataset
    workdir = tmp_path_factory.mktemp("run") / "full"
    summary = trainer.train(tiny_config(data, cache), workdir, evaluate_fn=no_eval)
    return workdir, summary


def test_full_run_writes_logs_checkpoints_and_export(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["step"] == 6 and summary["epoch"] == 3  # 8 images / batch 4 x 3 epochs
    losses = losses_of(workdir)
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
    first = trainer.train(config, workdir, evaluate_fn=no_eval, max_steps=3)  # mid-epoch 2
    assert first["step"] == 3 and first["next_batch"] == 1
    second = trainer.train(config, workdir, evaluate_fn=no_eval)
    assert second["step"] == 6 and second["steps_run"] == 3
    assert losses_of(workdir) == losses_of(full_dir)
    for a, b in zip(jax.tree.leaves(second["state"].params),
                    jax.tree.leaves(full["state"].params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(second["state"].ema),
                    jax.tree.leaves(full["state"].ema), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad_step", [3, 4])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch,
                                                          bad_step):
    """The loss is read one step late, so the run stops one step after the bad one; step 4 is
    also the end of epoch 2, whose save must read step 4's loss before writing anything."""
    data, cache = dataset

    def poison(k, state, metrics, mesh):
        if k == bad_step:
            metrics = dict(metrics, total=metrics["total"] * np.nan)
        return state, metrics

    wrap_step(monkeypatch, poison)
    workdir = tmp_path / "nan"
    with pytest.raises(trainer.NonFiniteLossError,
                       match=rf"non-finite loss nan at step {bad_step}") as e:
        trainer.train(tiny_config(data, cache), workdir, evaluate_fn=no_eval)
    assert "(step 2) is intact" in str(e.value)
    ckpt = TrainCheckpointer(workdir)
    assert ckpt.manager.all_steps() == [2]
    ckpt.close()
    from yolox_jax.train.checkpointing import load_inference_variables

    variables, _ = load_inference_variables(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_sigterm_saves_at_the_exact_position_and_exits(dataset, tmp_path, monkeypatch):
    data, cache = dataset

    def signal_after_first(k, state, metrics, mesh):
        if k == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return state, metrics

    wrap_step(monkeypatch, signal_after_first)
    workdir = tmp_path / "term"
    summary = trainer.train(tiny_config(data, cache), workdir, evaluate_fn=no_eval)
    assert summary["stopped_by_signal"] == signal.SIGTERM and summary["stop_agreed"]
    # seen when step 1's metrics are read, i.e. after step 2 was dispatched: step 2 is saved
    assert summary["step"] == 2 and summary["steps_run"] == 2
    ckpt = TrainCheckpointer(workdir)
    assert ckpt.latest_step() == 2
    ckpt.close()


def test_save_interval_steps(dataset, tmp_path):
    """Every `save_interval_steps` steps and at every epoch end (2 steps each here)."""
    config = tiny_config(*dataset)
    config.train.save_interval_steps = 3
    config.train.keep_checkpoints = 10
    summary = trainer.train(config, tmp_path / "interval", evaluate_fn=no_eval)
    assert summary["step"] == 6
    ckpt = TrainCheckpointer(tmp_path / "interval")
    assert ckpt.manager.all_steps() == [2, 3, 4, 6]
    _, data_state, _ = ckpt.restore(summary["state"], step=3)
    assert (data_state["epoch"], data_state["next_batch"]) == (1, 1)  # step 3: epoch 2 batch 1
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


def test_progress_bar_only_on_a_terminal_outside_ci(monkeypatch):
    import io

    from yolox_jax.train.progress import EpochProgress, progress_enabled

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress_enabled(True, Tty())
    assert not progress_enabled(False, Tty())  # only process 0
    assert not progress_enabled(True, io.StringIO())  # not a terminal (a log file, a pipe)
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(True, Tty())

    out = Tty()
    bar = EpochProgress(True, max_epoch=3, file=out)
    bar.start(epoch=1, done=2, total=5)
    bar.update({"total": 7.25, "iou": 3.0, "obj": 2.0, "cls": 1.0, "l1": 0.25}, 12.5, 75.0)
    bar.write("epoch 2/3 iter 3/5 total 7.250")
    bar.close()
    text = out.getvalue()
    assert "epoch 2/3" in text and "3/5" in text  # resumed at batch 2, one step done
    assert "total=7.250" in text and "img/s=12.5" in text and "ETA=0:01:15" in text
    assert "epoch 2/3 iter 3/5 total 7.250\n" in text  # log lines pass above the bar
