"""The training loop end to end on a tiny synthetic VOC dataset: exact resume, NaN stop (read one
step late) with the last good checkpoint intact, SIGTERM saves and exits, no per-step blocking
read, save every N steps, all multi-scale shapes compiled up front and reloaded from the
persistent cache, fine-tuning from another class count. Multi-process runs and SIGKILL during a
save: tests/test_trainer_processes.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_voc import SIZE, tiny_config, write_voc  # noqa: E402

from yolox_jax.train import trainer
from yolox_jax.train.checkpointing import TrainCheckpointer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, jax_cache):
    root = tmp_path_factory.mktemp("voc")
    return write_voc(root / "tiny"), jax_cache


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


def _wrap_step(monkeypatch, after_step):
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

    _wrap_step(monkeypatch, poison)
    workdir = tmp_path / "nan"
    with pytest.raises(trainer.NonFiniteLossError,
                       match=rf"non-finite loss nan at step {bad_step}") as e:
        trainer.train(tiny_config(data, cache), workdir, evaluate_fn=_no_eval)
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

    _wrap_step(monkeypatch, signal_after_first)
    workdir = tmp_path / "term"
    summary = trainer.train(tiny_config(data, cache), workdir, evaluate_fn=_no_eval)
    assert summary["stopped_by_signal"] == signal.SIGTERM and summary["stop_agreed"]
    # seen when step 1's metrics are read, i.e. after step 2 was dispatched: step 2 is saved
    assert summary["step"] == 2 and summary["steps_run"] == 2
    ckpt = TrainCheckpointer(workdir)
    assert ckpt.latest_step() == 2
    ckpt.close()


def test_no_per_step_blocking_read_in_the_loop(dataset, tmp_path, monkeypatch):
    """Each step's results (its metrics and its state's step counter) are held back on the
    device by a host callback until the loop dispatches the next step, or reads them through
    `trainer._fetch` (the loop's one read, one step late). A loop that reads a value of step N
    before dispatching step N + 1 (`float(metrics["total"])`, `int(state.step)`) would wait
    for a release that never comes: such a step is recorded as timed out."""
    import threading

    import jax.numpy as jnp
    from jax.experimental import io_callback

    from yolox_jax.train.step import replicated

    gates: dict[int, threading.Event] = {}
    released: dict[int, str] = {}
    held: dict[int, str] = {}  # what each step's callback saw when it was let go
    by_array: dict[int, int] = {}  # id(gated metrics["total"]) -> step

    def release(k: int, why: str) -> None:
        if k in gates and k not in released:
            released[k] = why
            gates[k].set()

    def hold(k):
        k = int(k)
        held[k] = released[k] if gates[k].wait(timeout=300) else "timed out"
        return np.zeros((), np.float32)

    passthrough = {}

    def gate(k, state, metrics, mesh):
        release(k - 1, "next step dispatched")
        gates[k] = threading.Event()
        if "fn" not in passthrough:
            def fn(total, step, k):
                z = io_callback(hold, jax.ShapeDtypeStruct((), jnp.float32), k)
                return total + z, step + z.astype(step.dtype)

            passthrough["fn"] = jax.jit(fn, out_shardings=(replicated(mesh),) * 2)
        total, step = passthrough["fn"](metrics["total"], state.step, np.int32(k))
        by_array[id(total)] = k
        return state.replace(step=step), dict(metrics, total=total)

    real_fetch = trainer._fetch
    fetched: list[int] = []

    def fetch(tree):
        k = by_array[id(tree[0]["total"])]
        fetched.append(k)
        release(k, "read through _fetch")
        return real_fetch(tree)

    _wrap_step(monkeypatch, gate)
    monkeypatch.setattr(trainer, "_fetch", fetch)
    config = tiny_config(*dataset)
    config.train.print_interval = 100
    summary = trainer.train(config, tmp_path / "gated", evaluate_fn=_no_eval)
    assert summary["step"] == 6
    assert fetched == [1, 2, 3, 4, 5, 6]  # every step's metrics read once, in order
    # steps 2, 4, 6 end an epoch: their save reads them first; the others never block the loop
    assert held == {1: "next step dispatched", 2: "read through _fetch",
                    3: "next step dispatched", 4: "read through _fetch",
                    5: "next step dispatched", 6: "read through _fetch"}, held


def test_save_interval_steps(dataset, tmp_path):
    """Every `save_interval_steps` steps and at every epoch end (2 steps each here)."""
    config = tiny_config(*dataset)
    config.train.save_interval_steps = 3
    config.train.keep_checkpoints = 10
    summary = trainer.train(config, tmp_path / "interval", evaluate_fn=_no_eval)
    assert summary["step"] == 6
    ckpt = TrainCheckpointer(tmp_path / "interval")
    assert ckpt.manager.all_steps() == [2, 3, 4, 6]
    _, data_state, _ = ckpt.restore(summary["state"], step=3)
    assert (data_state["epoch"], data_state["next_batch"]) == (1, 1)  # step 3: epoch 2 batch 1
    ckpt.close()


def test_every_multiscale_shape_compiles_up_front_and_a_rerun_loads_them(dataset, tmp_path):
    """Seed 2 with random_size (1, 2): steps 0-9 at 64x64, steps 10-11 at 32x32. Both train
    step programs compile before the first step (2 threads); no compilation happens during the
    steps; a second run loads both from the persistent compilation cache."""
    from jax._src import monitoring

    from yolox_jax.train.compile import CacheHits, run_sizes

    data, _ = dataset
    cache = tmp_path / "fresh_cache"
    config = tiny_config(data, cache)
    config.seed = 2
    config.data.random_size = (1, 2)
    config.train.max_epoch = 6  # 12 steps
    config.train.print_interval = 100
    config.train.compile_workers = 2
    assert run_sizes(0, 12, 2, (SIZE, SIZE), 5, (1, 2)) == [(64, 64), (32, 32)]
    assert run_sizes(0, 10, 2, (SIZE, SIZE), 5, (1, 2)) == [(64, 64)]

    compiles: list[tuple[str, float]] = []
    monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compiles.append((name, secs))
        if name == "/jax/core/compile/backend_compile_duration" else None)
    from yolox_jax.train import step as step_mod

    real = step_mod.make_train_step
    in_loop: list[int] = []

    def counting(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(state, images, labels, use_l1, size):
            in_loop.append(len(compiles))
            return fn(state, images, labels, use_l1=use_l1, size=size)

        wrapped.lower = fn.lower
        return wrapped

    with pytest.MonkeyPatch.context() as mp, CacheHits() as hits:
        mp.setattr(step_mod, "make_train_step", counting)
        first = trainer.train(config, tmp_path / "first", evaluate_fn=_no_eval)
        after_first = len(compiles)
    assert first["step"] == 12 and len(in_loop) == 12
    assert set(first["compile"]["per_size"]) == {(64, 64), (32, 32)}
    assert first["compile"]["workers"] == 2
    assert in_loop[0] == in_loop[-1] == after_first  # nothing compiled once the steps began
    assert hits.count("jit_step") == 0  # a fresh cache directory

    with CacheHits() as hits:
        second = trainer.train(config, tmp_path / "second", evaluate_fn=_no_eval)
    assert hits.count("jit_step") == 2, hits.names  # both train step programs from the cache
    assert _losses(tmp_path / "second") == _losses(tmp_path / "first")
    print(f"\nprecompile fresh {first['compile']['seconds']:.1f} s, "
          f"from the cache {second['compile']['seconds']:.1f} s")

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
