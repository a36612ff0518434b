"""The trainer across real processes: SIGKILL during a save, and a 2-process jax.distributed run
where only one process gets SIGTERM and the trainer evaluates on both.

* kill -9 in the middle of a save (save every step, keep 1): the worker blocks inside orbax's
  commit of step 3 (its files written to `3.orbax-checkpoint-tmp`, not yet renamed) and is
  killed there. The previous checkpoint (step 2) is intact, the resumed run continues from it
  and ends bit-identical to an uninterrupted run.
* Two processes (jax.distributed on localhost, one CPU device each, each feeding its half of
  every batch), 12 images, batch 4 (3 steps per epoch), evaluation after every epoch with the
  real evaluator (each process predicts half of the images; the detections are gathered with
  `process_allgather`). Process 1 sends itself SIGTERM after dispatching step 4; both agree
  (the stop vote all-reduce) and save step 5, mid-epoch 2, and exit. Both report the same
  evaluation, which equals a single-process evaluation of the checkpointed EMA weights.

Workers run this file as a script (device counts are fixed at JAX start-up).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

TEST_FILE = Path(__file__).resolve()
KILL_STEP = 3
EVAL_KEYS = ("mAP50", "mAP50_95", "num_detections")


# ---- the worker processes -------------------------------------------------------------------


def _exit_with_parent() -> None:
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _kill_in_save_worker(workdir: str, data: str, cache: str) -> None:
    """Train with a save every step; block forever in the commit (rename) of step KILL_STEP."""
    from orbax.checkpoint._src.path import atomicity
    from tiny_voc import tiny_config

    from yolox_jax.train import trainer

    real = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if self.get_final().name == str(KILL_STEP):
            (Path(workdir) / f"in_save_{KILL_STEP}").write_text(str(self.get()))
            time.sleep(3600)  # killed here
        return await real(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    trainer.train(_kill_config(tiny_config(Path(data), Path(cache))), workdir,
                  evaluate_fn=lambda *a: {})
    raise SystemExit("the run was not killed")


def _kill_config(config):
    config.train.save_interval_steps = 1
    config.train.keep_checkpoints = 1
    return config


def _distributed_worker(pid: str, port: str, workdir: str, data: str, cache: str,
                        out: str) -> None:
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(pid), initialization_timeout=120)
    assert jax.process_count() == 2 and len(jax.devices()) == 2, jax.devices()
    from yolox_jax.train import step as step_mod
    from yolox_jax.train import trainer

    real = step_mod.make_train_step

    def signalling(*args, **kwargs):
        fn = real(*args, **kwargs)
        count = [0]

        def wrapped(state, images, labels, use_l1, size):
            count[0] += 1
            out = fn(state, images, labels, use_l1=use_l1, size=size)
            if jax.process_index() == 1 and count[0] == 4:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        wrapped.lower = fn.lower
        return wrapped

    step_mod.make_train_step = signalling
    evals = []

    def evaluate(model, variables, config):
        from yolox_jax.eval.evaluator import evaluate_config_dataset

        stats = evaluate_config_dataset(model, variables, config, progress=False)
        evals.append({k: float(stats[k]) for k in EVAL_KEYS})
        return stats

    summary = trainer.train(_distributed_config(Path(data), Path(cache)), workdir,
                            evaluate_fn=evaluate)
    Path(out).write_text(json.dumps({
        "step": summary["step"], "epoch": summary["epoch"],
        "next_batch": summary["next_batch"], "steps_run": summary["steps_run"],
        "stopped_by_signal": summary["stopped_by_signal"],
        "stop_agreed": summary["stop_agreed"], "evals": evals,
    }))
    jax.distributed.shutdown()


def _distributed_config(data: Path, cache: Path):
    from tiny_voc import tiny_config

    config = tiny_config(data, cache)
    config.model.depthwise = False  # compiles ~3x faster on CPU; sharding-neutral
    config.train.eval_interval = 1
    config.train.keep_checkpoints = 5
    config.test.conf = 1e-6  # 3 steps from scratch: scores are ~1e-4, keep detections
    return config


# ---- helpers ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, n_devices: int = 1) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, str(TEST_FILE), *args], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=TEST_FILE.parents[1])


def _losses(workdir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["total"]) for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, jax_cache):
    from tiny_voc import write_voc

    root = tmp_path_factory.mktemp("voc_processes")
    return write_voc(root / "tiny8"), write_voc(root / "tiny12", n=12), jax_cache


@pytest.fixture(scope="module")
def distributed(data, tmp_path_factory):
    """The 2-process run, started at once (it runs beside the kill test)."""
    _, data12, cache = data
    tmp = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    procs = []
    for pid in (0, 1):
        procs.append((_start(["distributed", str(pid), str(port), str(tmp / "run"), str(data12),
                              str(cache), str(tmp / f"out{pid}.json")], tmp / f"log{pid}"),
                      tmp / f"out{pid}.json", tmp / f"log{pid}"))
    yield tmp, procs
    for proc, _, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _results(procs, timeout: float = 900) -> list[dict]:
    t0 = time.time()
    out = []
    for proc, path, log in procs:
        try:
            proc.wait(timeout=max(timeout - (time.time() - t0), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode != 0 or not path.exists():
            raise AssertionError(f"worker failed (exit {proc.returncode}):\n"
                                 f"{log.read_text()[-4000:]}")
        out.append(json.loads(path.read_text()))
    return out


# ---- tests --------------------------------------------------------------------------------------


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(data, distributed, tmp_path):
    from tiny_voc import tiny_config

    from yolox_jax.train import trainer
    from yolox_jax.train.checkpointing import TrainCheckpointer

    data8, _, cache = data
    workdir = tmp_path / "killed"
    workdir.mkdir()
    proc = _start(["kill_in_save", str(workdir), str(data8), str(cache)], tmp_path / "kill.log")
    # The uninterrupted reference run meanwhile, in this process (the worker starts up alone).
    reference = trainer.train(_kill_config(tiny_config(data8, cache)), tmp_path / "reference",
                              evaluate_fn=lambda *a: {})
    marker = workdir / f"in_save_{KILL_STEP}"
    t0 = time.time()
    while not marker.exists() and proc.poll() is None and time.time() - t0 < 600:
        time.sleep(0.2)
    if not marker.exists():
        proc.kill()
        raise AssertionError(f"the save never started:\n{(tmp_path / 'kill.log').read_text()}")
    tmp_dir = Path(marker.read_text())
    assert tmp_dir.name.startswith(f"{KILL_STEP}.orbax-checkpoint-tmp") and tmp_dir.is_dir()
    assert any(tmp_dir.rglob("*")), "the step's files are written, only the commit is left"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    ckpt = TrainCheckpointer(workdir)
    assert ckpt.manager.all_steps() == [KILL_STEP - 1]  # keep=1, and step 3 never committed
    ckpt.close()
    resumed = trainer.train(_kill_config(tiny_config(data8, cache)), workdir,
                            evaluate_fn=lambda *a: {})
    assert resumed["steps_run"] == 6 - (KILL_STEP - 1) and resumed["step"] == 6
    assert _losses(workdir)[-4:] == _losses(tmp_path / "reference")[-4:]
    import jax

    for a, b in zip(jax.tree.leaves(resumed["state"].params),
                    jax.tree.leaves(reference["state"].params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))


def test_two_processes_agree_on_a_stop_one_of_them_received(distributed):
    tmp, procs = distributed
    r0, r1 = _results(procs)
    for r in (r0, r1):  # signal seen with step 4's metrics, read after step 5 was dispatched
        assert (r["step"], r["epoch"], r["next_batch"], r["steps_run"]) == (5, 1, 2, 5), r
        assert r["stop_agreed"]
    assert r1["stopped_by_signal"] == signal.SIGTERM and r0["stopped_by_signal"] is None
    from yolox_jax.train.checkpointing import TrainCheckpointer

    ckpt = TrainCheckpointer(tmp / "run")
    assert ckpt.manager.all_steps() == [3, 5]  # epoch 1, then the agreed stop
    ckpt.close()


def test_evaluation_during_a_two_process_run(distributed, data):
    """Epoch 1's evaluation (each process predicts half of the 4 test images, all detections
    gathered) is the same on both processes and equals one process evaluating the same EMA
    weights alone."""
    tmp, procs = distributed
    r0, r1 = _results(procs)
    assert len(r0["evals"]) == len(r1["evals"]) == 1
    assert r0["evals"] == r1["evals"]
    from yolox_jax.eval.evaluator import evaluate_config_dataset
    from yolox_jax.models.yolox import build_model
    from yolox_jax.train.checkpointing import load_inference_variables

    _, data12, cache = data
    config = _distributed_config(data12, cache)
    # the 2-process checkpoint of epoch 1, loaded onto this process's one device
    variables, _ = load_inference_variables(tmp / "run", step=3)
    stats = evaluate_config_dataset(build_model(config), variables, config, progress=False)
    single = {k: float(stats[k]) for k in EVAL_KEYS}
    assert single["num_detections"] > 0
    assert single == pytest.approx(r0["evals"][0], abs=1e-6)


if __name__ == "__main__":
    sys.path.insert(0, str(TEST_FILE.parent))
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    _exit_with_parent()
    mode, args = sys.argv[1], sys.argv[2:]
    {"kill_in_save": _kill_in_save_worker, "distributed": _distributed_worker}[mode](*args)
