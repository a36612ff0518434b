"""The training loop: data -> sharded step -> logs, periodic evaluation, checkpoints, resume.

The loop never waits for the device between steps. The step counter lives on the host (an int,
read from the state once at start), the next batches are copied to the mesh while a step runs
(`prefetch.prefetch_to_mesh`, two in flight), every multi-scale shape is compiled before the
first step (`compile.precompile`), and the metrics of step N are read from the device only after
step N + 1 has been dispatched (`_fetch`, the loop's one device-to-host read), so the device
always has the next step queued.

One step of delay, and what it means for a non-finite loss: the NaN/Inf of step N is seen once
step N + 1 is already running (on the bad state). Nothing is saved in between: every save (end of
epoch, `train.save_interval_steps`, stop, `max_steps`) first reads and checks the metrics of the
step it saves, so a bad state is never written; the run stops naming step N and the last good
checkpoint is intact.

Stopping is always clean: SIGTERM/SIGINT on any host is agreed by all hosts (a tiny all-reduce
after every step, read with the metrics: `preemption.StopAgreement`), so all save the same step
at the exact data position and exit (one step after the signal is seen, on a multi-host run).
Checkpoints are atomic (orbax writes `<step>.orbax-checkpoint-tmp` and renames it once
complete), so a SIGKILL during a save leaves the previous checkpoint to resume from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np


class NonFiniteLossError(FloatingPointError):
    pass


def setup_runtime(config: ml_collections.ConfigDict) -> None:
    """Multi-host initialisation and the persistent compilation cache (restarts don't recompile)."""
    from yolox_jax.train.compile import enable_compilation_cache

    t = config.train
    if t.distributed and not jax.distributed.is_initialized():
        kwargs = {}
        if t.coordinator_address:
            kwargs = dict(coordinator_address=t.coordinator_address,
                          num_processes=int(t.num_processes), process_id=int(t.process_id))
        jax.distributed.initialize(**kwargs)  # no args: TPU pods / SLURM are auto-detected
    if t.compilation_cache:
        enable_compilation_cache()


def init_variables_from(
    model: Any, fresh: dict, path: str, config: ml_collections.ConfigDict, log=print
) -> dict:
    """Fine-tuning start: every tensor of `path` (official .pth or ours) whose shape fits is
    copied; the others (the class predictions when num_classes differs) keep their fresh
    initialisation, and we say which."""
    from yolox_jax.weights.checkpoint import load_checkpoint
    from yolox_jax.weights.convert import flatten_tree, unflatten_tree

    _, loaded, _ = load_checkpoint(path)
    out = {}
    reinit = []
    for col in ("params", "batch_stats"):
        src = flatten_tree(loaded.get(col, {}))
        dst = flatten_tree(jax.device_get(fresh[col]))
        merged = {}
        for k, v in dst.items():
            if k in src and tuple(np.shape(src[k])) == tuple(np.shape(v)):
                merged[k] = np.asarray(src[k], np.float32)
            else:
                merged[k] = v
                reinit.append("/".join(k))
        out[col] = unflatten_tree(merged)
        missing = [k for k in src if k not in dst]
        if missing:
            raise ValueError(f"{path}: {len(missing)} tensors have no place in {config.name}, "
                             f"e.g. {'/'.join(missing[0])}")
    if reinit:
        log(f"init_from {path}: re-initialised {len(reinit)} tensors whose shape differs "
            f"(num_classes {config.model.num_classes}): {', '.join(reinit)}")
    else:
        log(f"init_from {path}: all tensors loaded")
    return out


class MetricsLogger:
    """Console line, JSON-lines file and tensorboardX (process 0 only)."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.printer = functools.partial(print, flush=True)  # the progress bar replaces it
        self.jsonl = None
        self.tb = None
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(workdir / "metrics.jsonl", "a")
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self.jsonl.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{kind}/{k}", v, step)
        self.tb.flush()

    def print(self, msg: str) -> None:
        if self.enabled:
            self.printer(msg)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
          evaluate_fn: Any = None, max_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) in `workdir`. Returns a summary (last metrics, last eval, steps run).

    `evaluate_fn(model, variables, config) -> dict` overrides the evaluator (by default an
    `eval.evaluator.Evaluator`, built at the first evaluation and held for the run; called on
    every process, with host copies of the EMA variables); `max_steps` stops early
    (tests, benchmarks) after saving.
    """
    from yolox_jax.config import config_to_json
    from yolox_jax.data.datasets import read_split
    from yolox_jax.data.multiscale import multiscale_size
    from yolox_jax.data.pipeline import TrainLoader
    from yolox_jax.models.yolox import build_model, init_variables
    from yolox_jax.sharding import batch_sharding, make_mesh, replicated
    from yolox_jax.train.checkpointing import TrainCheckpointer
    from yolox_jax.train.compile import precompile, run_sizes
    from yolox_jax.train.optim import make_optimizer
    from yolox_jax.train.preemption import StopAgreement, StopSignal
    from yolox_jax.train.prefetch import prefetch_to_mesh
    from yolox_jax.train.state import create_train_state
    from yolox_jax.train.step import BN_SYNC, make_train_step

    t, d = config.train, config.data
    if t.bn_sync not in BN_SYNC:
        raise ValueError(f"config.train.bn_sync must be one of {BN_SYNC}, got {t.bn_sync!r}")
    if int(t.save_interval_steps) < 0:
        raise ValueError(f"config.train.save_interval_steps must be >= 0 (0: at the end of "
                         f"every epoch only), got {t.save_interval_steps}")
    setup_runtime(config)
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    logger = MetricsLogger(workdir, is_main)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config_to_json(config))

    info = read_split(config, "train")
    records = info.records
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if t.batch_size % n_dev:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by the {n_dev} "
                         "devices of the mesh")
    loader = TrainLoader(
        records, d, global_batch_size=int(t.batch_size), seed=int(config.seed),
        no_aug_epochs=int(t.no_aug_epochs), max_epoch=int(t.max_epoch),
        num_workers=int(d.num_workers), process_index=jax.process_index(),
        process_count=jax.process_count(), input_size=tuple(d.input_size), images=info.images,
    )
    iters_per_epoch = int(t.iters_per_epoch) or loader.iters_per_epoch
    model = build_model(config)
    fresh = init_variables(model, jax.random.key(config.seed), tuple(d.input_size))
    if t.init_from:
        fresh = init_variables_from(model, fresh, t.init_from, config, logger.print)
    tx, schedule = make_optimizer(t, int(t.batch_size), iters_per_epoch)
    state = create_train_state(fresh, tx, int(config.seed), use_ema=bool(t.ema))
    step_fn = make_train_step(
        model, tx, schedule, mesh, rule=t.assignment_rule, center_radius=t.center_radius,
        ema_decay=float(t.ema_decay), bn_sync=str(t.bn_sync),
    )

    ckpt = TrainCheckpointer(workdir, keep=int(t.keep_checkpoints))
    epoch, next_batch, best_ap = 0, 0, -1.0
    resumed = ckpt.latest_step() is not None
    if resumed:
        state, data_state, meta = ckpt.restore(state)
        epoch, next_batch = loader.restore(data_state)
        best_ap = float(meta.get("best_ap", -1.0))
    state = jax.device_put(state, replicated(mesh))
    step = int(state.step)  # the host's step counter from here on: no per-step device reads
    if resumed:
        logger.print(f"resumed from step {step} (epoch {epoch + 1}, batch {next_batch})")

    # Every input size the remaining steps use, compiled before the first step.
    max_epoch = int(t.max_epoch)
    remaining = max_epoch * loader.iters_per_epoch - (epoch * loader.iters_per_epoch + next_batch)
    if max_steps:
        remaining = min(remaining, int(max_steps))
    ms = (tuple(d.input_size), d.multiscale_range, tuple(d.random_size))
    sizes = run_sizes(step, step + remaining, int(config.seed), *ms)
    g, (h, w) = int(t.batch_size), tuple(d.input_size)
    images_spec = jax.ShapeDtypeStruct((g, h, w, 3), np.uint8, sharding=batch_sharding(mesh))
    labels_spec = jax.ShapeDtypeStruct((g, int(d.max_labels), 5), np.float32,
                                       sharding=batch_sharding(mesh))
    compiled = precompile(lambda size: step_fn.lower(state, images_spec, labels_spec, size),
                          sizes, workers=int(t.compile_workers), log=logger.print)
    logger.log(step, "compile", {"seconds": compiled["seconds"], "sizes": len(sizes)})

    def save(step: int, epoch: int, next_batch: int) -> None:
        ckpt.save(step, state, loader.state(epoch, next_batch), {"best_ap": best_ap}, config)

    eval_fn = evaluate_fn or _DefaultEvaluation()

    def evaluate(epoch: int, what: str) -> dict:
        nonlocal best_ap
        stats = _log_eval(eval_fn, model, state, config, logger, step, epoch, what)
        ap = _headline_ap(stats) if stats else None
        if ap is not None and ap > best_ap:
            best_ap = ap
            _export(workdir / "best", state, config)
        return stats

    aug_epochs = max_epoch - int(t.no_aug_epochs)
    eval_every = max(int(t.eval_interval), 1)
    save_every = int(t.save_interval_steps)
    run_log = _RunLog(logger, config, iters_per_epoch, loader.iters_per_epoch, step, is_main)
    agreement = StopAgreement(mesh)
    stream = _Timed(prefetch_to_mesh(_batches(loader, epoch, next_batch), mesh, size=2))
    last_eval: dict[str, Any] = {}
    pending: _Pending | None = None  # the dispatched step whose metrics are not read yet
    steps_run, stopped = 0, False
    with StopSignal() as stop:
        try:
            if t.eval_at_start and not resumed:
                last_eval = evaluate(0, "before training")
            for batch in stream:
                size = multiscale_size(step, int(config.seed), *ms)
                state, metrics = step_fn(state, batch.images, batch.labels,
                                         use_l1=batch.epoch >= aug_epochs, size=size)
                step += 1
                steps_run += 1
                epoch_end = batch.batch_index + 1 == loader.iters_per_epoch
                epoch, next_batch = ((batch.epoch + 1, 0) if epoch_end
                                     else (batch.epoch, batch.batch_index + 1))
                # Read the previous step's metrics now that this one is queued.
                done = _check(pending, ckpt)
                pending = _Pending(step, batch.epoch, batch.batch_index, size, metrics,
                                   agreement.dispatch(stop.requested), stream.take_wait())
                stopped = run_log.step_done(done, stop.requested) or bool(
                    max_steps and steps_run >= max_steps)
                if epoch_end or stopped or (save_every and step % save_every == 0):
                    done, pending = _check(pending, ckpt), None  # never save unchecked state
                    stopped = run_log.step_done(done, stop.requested) or stopped
                    if epoch_end and (epoch % eval_every == 0 or epoch == max_epoch):
                        last_eval = evaluate(epoch, f"epoch {epoch}")
                    save(step, epoch, next_batch)
                if stopped:
                    break
            if stop.requested or run_log.stop_agreed:
                who = f"signal {stop.signal}" if stop.requested else "stop requested by a host"
                logger.print(f"{who}: saved step {step}, exiting")
        finally:
            stream.close()
            loader.close()  # the worker processes
            loader.store.close()  # the image cache (shared memory for data.cache="ram")
            run_log.close()
            ckpt.close()
            logger.close()
    if epoch >= max_epoch:
        _export(workdir / "final", state, config)
    if is_main and t.get("plot", True):
        _plot_results(workdir, print)
    return {"metrics": run_log.last_metrics, "eval": last_eval, "steps_run": steps_run,
            "step": step, "epoch": epoch, "next_batch": next_batch,
            "stopped_by_signal": stop.signal, "stop_agreed": run_log.stop_agreed,
            "compile": compiled, "state": state}


def _plot_results(workdir: Path, log: Any) -> None:
    """workdir/results.png from metrics.jsonl (losses, lr and mAP per epoch), at the end of
    every run, also a stopped one; a missing matplotlib is said once, never an error."""
    from yolox_jax.plots import PlotsUnavailable, plot_results

    try:
        log(f"training curves: {plot_results(workdir)}")
    except PlotsUnavailable as e:
        log(f"no results.png: {e}")


def _batches(loader: Any, epoch: int, start_batch: int) -> Iterator[Any]:
    """The loader's batches from (epoch, start_batch) to the end of its last epoch, in one
    stream (the loader keeps its workers across epochs)."""
    for e in range(epoch, loader.max_epoch):
        yield from loader.epoch(e, start_batch=start_batch if e == epoch else 0)


class _Timed:
    """An iterator that adds up how long the loop waited for it (the data wait)."""

    def __init__(self, it: Iterator[Any]):
        self._it = it
        self._wait = 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Any:
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self._wait += time.perf_counter() - t

    def take_wait(self) -> float:
        wait, self._wait = self._wait, 0.0
        return wait

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


@dataclasses.dataclass
class _Pending:
    """A dispatched step: its metrics and stop vote are still device arrays."""

    step: int  # the step count after it
    epoch: int
    batch_index: int
    size: tuple[int, int]
    metrics: dict[str, jax.Array]
    stop: jax.Array | None
    data_wait: float


@dataclasses.dataclass
class _Done:
    step: int
    epoch: int
    batch_index: int
    size: tuple[int, int]
    metrics: dict[str, float]
    stop: Any  # the fetched stop vote (None on one process)
    data_wait: float


def _fetch(tree: Any) -> Any:
    """The training loop's only device-to-host read (blocks until `tree` is computed)."""
    return jax.device_get(tree)


def _check(pending: _Pending | None, ckpt: Any) -> _Done | None:
    """Read a dispatched step's metrics; a non-finite loss stops the run before any save."""
    if pending is None:
        return None
    metrics, stop = _fetch((pending.metrics, pending.stop))
    metrics = {k: float(v) for k, v in metrics.items()}
    if not math.isfinite(metrics["total"]):
        raise NonFiniteLossError(
            f"non-finite loss {metrics['total']} at step {pending.step} (epoch "
            f"{pending.epoch + 1}, batch {pending.batch_index + 1}); stopped without saving (the "
            f"loss is read one step late: the step after it is discarded): the last good "
            f"checkpoint in {ckpt.directory} (step {ckpt.latest_step()}) is intact"
        )
    return _Done(pending.step, pending.epoch, pending.batch_index, pending.size, metrics, stop,
                 pending.data_wait)


class _RunLog:
    """What the loop reports about checked steps: the log line every `print_interval` steps and
    at the end of each epoch (console, metrics.jsonl, tensorboard), the progress bar, and the
    agreed stop vote."""

    def __init__(self, logger: MetricsLogger, config: ml_collections.ConfigDict,
                 sched_iters: int, loader_iters: int, first_step: int, is_main: bool):
        from yolox_jax.train.progress import EpochProgress, progress_enabled

        t = config.train
        self.logger = logger
        self.max_epoch = int(t.max_epoch)
        self.batch_size = int(t.batch_size)
        self.print_interval = max(int(t.print_interval), 1)
        self.sched_iters = sched_iters
        self.loader_iters = loader_iters
        self.total_steps = sched_iters * self.max_epoch
        self.bar = EpochProgress(progress_enabled(is_main), self.max_epoch)
        if self.bar.enabled:
            logger.printer = self.bar.write
        self.bar_epoch: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.stop_agreed = False
        self._t_first: float | None = None  # when the first step was checked (ETA rate)
        self._first_step = first_step
        self._t_last = time.perf_counter()
        self._data_wait = 0.0
        self._since_log = 0

    def step_done(self, done: _Done | None, local_stop: bool) -> bool:
        """Report a checked step; True when a host asked to stop (agreed by all hosts; on one
        process, this process's `local_stop`)."""
        if done is None:
            return False
        from yolox_jax.train.preemption import StopAgreement

        now = time.perf_counter()
        if self._t_first is None:
            self._t_first, self._first_step = now, done.step
        self._since_log += 1
        self._data_wait += done.data_wait
        rate = (done.step - self._first_step) / max(now - self._t_first, 1e-9)
        eta = (self.total_steps - done.step) / rate if rate > 0 else float("nan")
        images_per_s = self.batch_size * self._since_log / max(now - self._t_last, 1e-9)
        if self.bar_epoch != done.epoch:
            self.bar.start(done.epoch, done.batch_index, self.loader_iters)
            self.bar_epoch = done.epoch
        self.bar.update(done.metrics, images_per_s, eta)
        epoch_end = done.batch_index + 1 == self.loader_iters
        if (done.step - 1) % self.print_interval == 0 or epoch_end:
            m = dict(done.metrics, images_per_s=images_per_s, data_wait_s=self._data_wait,
                     epoch=done.epoch + 1, size_h=done.size[0])
            self.last_metrics = m
            self.logger.log(done.step, "train", m)
            self.logger.print(
                f"epoch {done.epoch + 1}/{self.max_epoch} iter {done.batch_index + 1}/"
                f"{self.sched_iters} total {m['total']:.3f} iou {m['iou']:.3f} "
                f"obj {m['obj']:.3f} cls {m['cls']:.3f} l1 {m['l1']:.3f} "
                f"fg {m['num_fg']:.0f} lr {m['lr']:.2e} size {done.size[0]}x{done.size[1]} "
                f"{images_per_s:.1f} img/s data {self._data_wait:.1f}s "
                f"ETA {eta / 60:.1f} min"
            )
            self._t_last, self._data_wait, self._since_log = now, 0.0, 0
        stop = StopAgreement.resolve(done.stop, local_stop)
        self.stop_agreed = self.stop_agreed or stop
        return stop

    def close(self) -> None:
        self.bar.close()


def _host_variables(state: Any) -> dict[str, Any]:
    """The EMA variables as host numpy arrays (every process holds the replicated values)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.variables())


def _export(directory: Path, state: Any, config: ml_collections.ConfigDict) -> None:
    """The EMA weights as an inference checkpoint (process 0 writes it)."""
    from yolox_jax.weights.checkpoint import save_checkpoint

    if jax.process_index() == 0:
        save_checkpoint(directory, _host_variables(state), config)


def _log_eval(evaluate_fn, model, state, config, logger, step: int, epoch: int,
              what: str) -> dict:
    """Evaluate the EMA weights (every process; the evaluator splits the images over them);
    log the numbers (step, epoch) to every sink (process 0)."""
    stats = evaluate_fn(model, _host_variables(state), config) or {}
    numbers = {k: float(v) for k, v in stats.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        logger.log(step, "eval", {**numbers, "epoch": epoch})
        logger.print(f"{what} eval: " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
    return stats


def _headline_ap(stats: dict) -> float | None:
    for key in ("AP", "mAP50_95", "mAP50"):
        if key in stats:
            return float(stats[key])
    return None


class _DefaultEvaluation:
    """`eval.evaluator.Evaluator` on `config.data`'s val split, built at the first call and
    held for the run (dataset, ground truth and compiled predictor reused; only the weights
    change)."""

    def __init__(self) -> None:
        self.evaluator: Any = None

    def __call__(self, model: Any, variables: Any, config: ml_collections.ConfigDict) -> dict:
        if self.evaluator is None:
            try:
                from yolox_jax.eval.evaluator import Evaluator
            except ImportError as e:
                print(f"evaluation skipped: the evaluator is unavailable ({e})")
                return {}
            self.evaluator = Evaluator(model, config)
        return self.evaluator.evaluate(variables)
