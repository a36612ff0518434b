"""The training loop's asynchrony on the tiny synthetic VOC dataset: no per-step blocking read
(every step's results are gated on the device), and every multi-scale program compiled before
the first step and loaded from the persistent cache by a rerun. (Split from test_trainer.py so
that the two halves run in parallel under pytest-xdist.)"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tiny_voc import SIZE, losses_of, no_eval, tiny_config, wrap_step, write_voc

from yolox_jax.train import trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, jax_cache):
    root = tmp_path_factory.mktemp("voc")
    return write_voc(root / "tiny"), jax_cache


def test_no_per_step_blocking_read_in_the_loop(dataset, tmp_path, monkeypatch):
    """Each step's results (its metrics and its state's step counter) are held back on the
    device by a host callback until the loop dispatches the next step, or reads them through
    `trainer._fetch` (the loop's one read, one step late). A loop that reads a value of step N
    before dispatching step N + 1 (`float(metrics["total"])`, `int(state.step)`) would wait
    for a release that never comes: such a step is recorded as timed out. (A gate whose step
    had already finished runs inline on the loop's thread and cannot hold: "inline".)"""
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

    loop_thread = threading.get_ident()

    def hold(k):
        k = int(k)
        if threading.get_ident() == loop_thread:
            # XLA CPU runs a cheap program inline, on the dispatching thread, when its inputs
            # are ready: step k had already finished when its gate was dispatched, and waiting
            # here would block the loop itself. Nothing to observe for this step.
            held[k] = "inline"
        else:
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

    wrap_step(monkeypatch, gate)
    monkeypatch.setattr(trainer, "_fetch", fetch)
    config = tiny_config(*dataset)
    config.train.print_interval = 100
    summary = trainer.train(config, tmp_path / "gated", evaluate_fn=no_eval)
    assert summary["step"] == 6
    assert fetched == [1, 2, 3, 4, 5, 6]  # every step's metrics read once, in order
    # steps 2, 4, 6 end an epoch: their save reads them first; the others never block the loop
    want = {1: "next step dispatched", 2: "read through _fetch", 3: "next step dispatched",
            4: "read through _fetch", 5: "next step dispatched", 6: "read through _fetch"}
    assert sorted(held) == sorted(want), held
    assert all(held[k] in (want[k], "inline") for k in want), held
    # at least one mid-epoch step was really held on the device until the next dispatch
    assert any(held[k] == "next step dispatched" for k in (1, 3, 5)), held


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
        first = trainer.train(config, tmp_path / "first", evaluate_fn=no_eval)
        after_first = len(compiles)
    assert first["step"] == 12 and len(in_loop) == 12
    assert set(first["compile"]["per_size"]) == {(64, 64), (32, 32)}
    assert first["compile"]["workers"] == 2
    assert in_loop[0] == in_loop[-1] == after_first  # nothing compiled once the steps began
    assert hits.count("jit_step") == 0  # a fresh cache directory

    with CacheHits() as hits:
        second = trainer.train(config, tmp_path / "second", evaluate_fn=no_eval)
    assert hits.count("jit_step") == 2, hits.names  # both train step programs from the cache
    assert losses_of(tmp_path / "second") == losses_of(tmp_path / "first")
    print(f"\nprecompile fresh {first['compile']['seconds']:.1f} s, "
          f"from the cache {second['compile']['seconds']:.1f} s")
