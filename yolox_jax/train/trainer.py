"""The training loop: data -> sharded step -> logs, periodic evaluation, checkpoints, resume.

Stopping is always clean: SIGTERM/SIGINT finish the current step, save a checkpoint at the exact
data position and exit; a non-finite loss stops with the step named and leaves the last good
checkpoint untouched (nothing is saved after it).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np


class NonFiniteLossError(FloatingPointError):
    pass


def setup_runtime(config: ml_collections.ConfigDict) -> None:
    """Multi-host initialisation and the persistent compilation cache (restarts don't recompile)."""
    t = config.train
    if t.distributed and not jax.distributed.is_initialized():
        kwargs = {}
        if t.coordinator_address:
            kwargs = dict(coordinator_address=t.coordinator_address,
                          num_processes=int(t.num_processes), process_id=int(t.process_id))
        jax.distributed.initialize(**kwargs)  # no args: TPU pods / SLURM are auto-detected
    if t.compilation_cache:
        cache = os.environ.get(
            "YOLOX_JAX_COMPILATION_CACHE",
            str(Path(os.environ.get("YOLOX_JAX_HOME", Path.home() / ".cache/yolox_jax"))
                / "jax_cache"),
        )
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def read_train_records(config: ml_collections.ConfigDict):
    """The training split named by `config.data` (a shard set `train_shards`, COCO
    `train_ann` / `train_images`, or VOC `voc_train_split`) as a readers.DatasetInfo."""
    from yolox_jax.data import readers

    d = config.data
    if d.get("train_shards", ""):
        from yolox_jax.data.shards import open_shards

        return open_shards(d.train_shards, local_dir=d.get("shards_local_dir", ""))
    if d.format == "voc":
        return readers.read_voc(d.data_dir, d.voc_train_split, tuple(d.class_names) or None)
    if d.format == "coco":
        return readers.read_coco(d.data_dir, d.train_ann, d.train_images)
    raise ValueError(f"config.data.format must be 'coco' or 'voc', got {d.format!r}")


def init_variables_from(
    model: Any, fresh: dict, path: str, config: ml_collections.ConfigDict, log=print
) -> dict:
    """Fine-tuning start: every tensor of `path` (official .pth or ours) whose shape fits is
    copied; the others (the class predictions when num_classes differs) keep their fresh
    initialisation, and we say which."""
    from yolox_jax.weights.checkpoint import load_checkpoint
    from yolox_jax.weights.convert import _flat, _unflat

    _, loaded, _ = load_checkpoint(path)
    out = {}
    reinit = []
    for col in ("params", "batch_stats"):
        src = _flat(loaded.get(col, {}))
        dst = _flat(jax.device_get(fresh[col]))
        merged = {}
        for k, v in dst.items():
            if k in src and tuple(np.shape(src[k])) == tuple(np.shape(v)):
                merged[k] = np.asarray(src[k], np.float32)
            else:
                merged[k] = v
                reinit.append("/".join(k))
        out[col] = _unflat(merged)
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


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class MetricsLogger:
    """Console line, JSON-lines file and tensorboardX (process 0 only)."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
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
            print(msg, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
          evaluate_fn: Any = None, max_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume) in `workdir`. Returns a summary (last metrics, last eval, steps run).

    `evaluate_fn(model, variables, config) -> dict` overrides the evaluator of `evaluate.py`;
    `max_steps` stops early (tests, benchmarks) after saving.
    """
    from yolox_jax.data.multiscale import multiscale_size
    from yolox_jax.data.pipeline import TrainLoader
    from yolox_jax.models.yolox import build_model, init_variables
    from yolox_jax.train.checkpointing import TrainCheckpointer
    from yolox_jax.train.optim import make_optimizer
    from yolox_jax.train.state import create_train_state
    from yolox_jax.train.step import global_batch, make_mesh, make_train_step
    from yolox_jax.weights.checkpoint import config_to_json, save_checkpoint

    setup_runtime(config)
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    logger = MetricsLogger(workdir, is_main)
    t, d = config.train, config.data
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config_to_json(config))

    info = read_train_records(config)
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
        ema_decay=float(t.ema_decay),
    )
    from yolox_jax.train.step import replicated

    ckpt = TrainCheckpointer(workdir, keep=int(t.keep_checkpoints))
    epoch, next_batch, best_ap = 0, 0, -1.0
    if ckpt.latest_step() is not None:
        state, data_state, meta = ckpt.restore(state)
        epoch, next_batch = loader.restore(data_state)
        best_ap = float(meta.get("best_ap", -1.0))
        logger.print(f"resumed from step {int(state.step)} (epoch {epoch + 1}, batch {next_batch})")
    state = jax.device_put(state, replicated(mesh))

    def save(step: int, epoch: int, next_batch: int) -> None:
        ckpt.save(step, state, loader.state(epoch, next_batch), {"best_ap": best_ap}, config)

    evaluate_fn = evaluate_fn or _default_evaluator
    last_eval: dict[str, Any] = {}
    last_metrics: dict[str, float] = {}
    steps_run = 0
    total_steps = iters_per_epoch * int(t.max_epoch)
    t_start = None  # set after the first step, so that compilation does not skew the ETA
    steps_timed = 0
    if t.eval_at_start and ckpt.latest_step() is None:
        last_eval = _log_eval(evaluate_fn, model, state, config, logger, 0, "before training")
    with _StopFlag() as stop:
        try:
            while epoch < int(t.max_epoch):
                no_aug = epoch >= int(t.max_epoch) - int(t.no_aug_epochs)
                t_data = time.time()
                data_wait = 0.0
                for batch in loader.epoch(epoch, start_batch=next_batch):
                    data_wait += time.time() - t_data
                    step = int(state.step)
                    size = multiscale_size(step, config.seed, tuple(d.input_size),
                                           d.multiscale_range, tuple(d.random_size))
                    images, labels = global_batch(mesh, batch.images, batch.labels)
                    t_step = time.time()
                    state, metrics = step_fn(state, images, labels, use_l1=no_aug, size=size)
                    next_batch = batch.batch_index + 1
                    steps_run += 1
                    total = float(metrics["total"])  # every step: never save a NaN state
                    if not math.isfinite(total):
                        raise NonFiniteLossError(
                            f"non-finite loss {total} at step {step + 1} (epoch {epoch + 1}, "
                            f"batch {batch.batch_index + 1}/{iters_per_epoch}); stopped without "
                            f"saving: the last good checkpoint in {ckpt.directory} "
                            f"(step {ckpt.latest_step()}) is intact"
                        )
                    if step % max(int(t.print_interval), 1) == 0 or next_batch == iters_per_epoch:
                        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        if t_start is None:
                            t_start, steps_timed = time.time(), steps_run
                        rate = (steps_run - steps_timed) / max(time.time() - t_start, 1e-9)
                        eta = (total_steps - step - 1) / rate if rate > 0 else float("nan")
                        m.update(images_per_s=int(t.batch_size) / max(time.time() - t_step, 1e-9),
                                 data_wait_s=data_wait, epoch=epoch + 1, size_h=size[0])
                        last_metrics = m
                        logger.log(step + 1, "train", m)
                        logger.print(
                            f"epoch {epoch + 1}/{t.max_epoch} iter {next_batch}/{iters_per_epoch}"
                            f" total {m['total']:.3f} iou {m['iou']:.3f} obj {m['obj']:.3f} "
                            f"cls {m['cls']:.3f} l1 {m['l1']:.3f} fg {m['num_fg']:.0f} "
                            f"lr {m['lr']:.2e} size {size[0]}x{size[1]} data {data_wait:.1f}s "
                            f"ETA {eta / 60:.1f} min"
                        )
                    t_data = time.time()
                    if stop.signal is not None or (max_steps and steps_run >= max_steps):
                        break
                else:
                    epoch, next_batch = epoch + 1, 0
                    if next_batch == 0 and (epoch % max(int(t.eval_interval), 1) == 0
                                            or epoch == int(t.max_epoch)):
                        last_eval = _log_eval(evaluate_fn, model, state, config, logger, epoch,
                                              f"epoch {epoch}")
                        if last_eval:
                            ap = _headline_ap(last_eval)
                            if ap is not None and ap > best_ap and is_main:
                                best_ap = ap
                                save_checkpoint(workdir / "best", state.variables(), config)
                    save(int(state.step), epoch, next_batch)
                    continue
                # broke out of the epoch: a stop signal or max_steps
                save(int(state.step), epoch, next_batch)
                if stop.signal is not None:
                    logger.print(f"signal {stop.signal}: saved step {int(state.step)}, exiting")
                break
        finally:
            ckpt.close()
            logger.close()
    if is_main and epoch >= int(t.max_epoch):
        save_checkpoint(workdir / "final", state.variables(), config)
    return {"metrics": last_metrics, "eval": last_eval, "steps_run": steps_run,
            "step": int(state.step), "epoch": epoch, "next_batch": next_batch,
            "stopped_by_signal": stop.signal, "state": state}


def _log_eval(evaluate_fn, model, state, config, logger, epoch: int, what: str) -> dict:
    """Evaluate the EMA weights; log the numbers (step, epoch) to every sink."""
    stats = evaluate_fn(model, state.variables(), config) or {}
    numbers = {k: float(v) for k, v in stats.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        logger.log(int(state.step), "eval", {**numbers, "epoch": epoch})
        logger.print(f"{what} eval: " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
    return stats


def _headline_ap(stats: dict) -> float | None:
    for key in ("AP", "mAP50_95", "mAP50"):
        if key in stats:
            return float(stats[key])
    return None


def _default_evaluator(model, variables, config) -> dict:
    try:
        from yolox_jax.eval.evaluator import evaluate_config_dataset
    except ImportError as e:
        print(f"evaluation skipped: the evaluator is unavailable ({e})")
        return {}
    return evaluate_config_dataset(model, variables, config)
