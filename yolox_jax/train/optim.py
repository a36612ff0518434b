"""The official YOLOX optimisation recipe: warm-up + cosine lr, SGD (nesterov) with three
parameter groups, and the model EMA.

Mapping to the official code (`yolox/exp/yolox_base.py:get_optimizer`,
`yolox/utils/lr_scheduler.py`, `yolox/utils/ema.py`, `yolox/core/trainer.py`):

* lr schedule `yoloxwarmcos`: quadratic warm-up, cosine down to `min_lr_ratio * lr`, flat for the
  last `no_aug_epochs`; `lr = basic_lr_per_img * global batch`.
* The official trainer sets the lr *after* each step: step t (0-based) runs with
  `update_lr(t)` (step 0 with `warmup_lr`, equal to `update_lr(0)`). optax's `scale_by_schedule`
  evaluates the schedule at its own count, which is t for step t: the same lr sequence.
* SGD groups: BN weights (Flax `scale`) and all biases (`bias`) without weight decay, conv weights
  (`kernel`) with coupled decay (added to the gradient before momentum, as torch SGD).
  torch nesterov SGD: `buf = m * buf + g` (first step `buf = g`), `p -= lr * (g + m * buf)`;
  optax's `trace(nesterov=True)` is the same (its buffer starts at 0, so `0 * m + g = g`).
* EMA: `updates += 1; d = decay * (1 - exp(-updates / 2000)); v = d * v + (1 - d) * model_v` for
  every float entry of the state, BN running statistics included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from yolox_jax.config import SCHEDULERS

Schedule = Callable[[jax.Array], jax.Array]

# Flax leaf name -> official parameter group (pg0 BN weights, pg1 conv weights, pg2 biases).
PARAM_GROUPS = {"scale": "bn_weight", "kernel": "conv_weight", "bias": "bias"}
EMA_RAMP = 2000.0  # official ModelEMA: decay * (1 - exp(-updates / 2000))


def yoloxwarmcos(
    lr: float,
    iters_per_epoch: int,
    total_epochs: int,
    warmup_epochs: float = 5,
    warmup_lr_start: float = 0.0,
    no_aug_epochs: int = 15,
    min_lr_ratio: float = 0.05,
) -> Schedule:
    """The official `yolox_warm_cos_lr` as a jnp-traceable `schedule(iters) -> lr` (float32).

    With `warmup_epochs = 0` the official formula would divide 0 / 0 at iteration 0 (its trainer
    never asks for it: step 0 uses the plain lr); here that case is the cosine branch, i.e. lr.
    """
    if iters_per_epoch <= 0 or total_epochs <= 0:
        raise ValueError(
            f"yoloxwarmcos needs iters_per_epoch > 0 and total_epochs > 0, got "
            f"{iters_per_epoch} and {total_epochs}"
        )
    total = iters_per_epoch * total_epochs
    warm = iters_per_epoch * warmup_epochs
    no_aug = iters_per_epoch * no_aug_epochs
    if total - warm - no_aug <= 0:
        raise ValueError(
            f"yoloxwarmcos: warmup_epochs {warmup_epochs} + no_aug_epochs {no_aug_epochs} leave no "
            f"cosine phase in {total_epochs} epochs"
        )
    min_lr = lr * min_lr_ratio

    def schedule(iters: jax.Array) -> jax.Array:
        it = jnp.asarray(iters, jnp.float32)
        cos = min_lr + 0.5 * (lr - min_lr) * (
            1.0 + jnp.cos(math.pi * (it - warm) / (total - warm - no_aug))
        )
        out = jnp.where(it >= total - no_aug, jnp.float32(min_lr), cos)
        if warm > 0:
            warmup = (lr - warmup_lr_start) * jnp.square(it / warm) + warmup_lr_start
            out = jnp.where(it <= warm, warmup, out)
        return out.astype(jnp.float32)

    return schedule


def make_schedule(
    train_cfg: ml_collections.ConfigDict, iters_per_epoch: int, global_batch: int
) -> Schedule:
    """The schedule of `c.train` (official `get_lr_scheduler`), lr = basic_lr_per_img * batch."""
    if train_cfg.scheduler not in SCHEDULERS:
        raise ValueError(
            f"train.scheduler {train_cfg.scheduler!r} is not supported; expected one of "
            f"{SCHEDULERS}"
        )
    return yoloxwarmcos(
        float(train_cfg.basic_lr_per_img) * int(global_batch),
        int(iters_per_epoch),
        int(train_cfg.max_epoch),
        warmup_epochs=float(train_cfg.warmup_epochs),
        warmup_lr_start=float(train_cfg.warmup_lr),
        no_aug_epochs=int(train_cfg.no_aug_epochs),
        min_lr_ratio=float(train_cfg.min_lr_ratio),
    )


def _leaf_name(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def param_groups(params: Any) -> Any:
    """The official group of every parameter leaf: 'bn_weight', 'conv_weight' or 'bias'."""

    def group(path, _):
        name = _leaf_name(path[-1])
        if name not in PARAM_GROUPS:
            where = "/".join(_leaf_name(p) for p in path)
            raise ValueError(
                f"parameter {where!r}: leaf name {name!r} is none of {sorted(PARAM_GROUPS)}, so "
                "its optimizer group (weight decay or not) is unknown"
            )
        return PARAM_GROUPS[name]

    return jax.tree_util.tree_map_with_path(group, params)


def decay_mask(params: Any) -> Any:
    """True for the leaves that get weight decay (conv weights, official pg1)."""
    return jax.tree.map(lambda g: g == "conv_weight", param_groups(params))


def sgd(schedule: Schedule | float, momentum: float = 0.9, weight_decay: float = 5e-4,
        nesterov: bool = True) -> optax.GradientTransformation:
    """torch SGD (dampening 0) with coupled weight decay on the conv weights only."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.trace(decay=momentum, nesterov=nesterov),
        optax.scale_by_learning_rate(schedule),
    )


def make_optimizer(
    train_cfg: ml_collections.ConfigDict, global_batch_size: int, iters_per_epoch: int
) -> tuple[optax.GradientTransformation, Schedule]:
    """The official `get_optimizer` + `get_lr_scheduler` for `c.train` -> (tx, schedule)."""
    if int(global_batch_size) <= 0:
        raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
    schedule = make_schedule(train_cfg, iters_per_epoch, global_batch_size)
    tx = sgd(
        schedule,
        momentum=float(train_cfg.momentum),
        weight_decay=float(train_cfg.weight_decay),
        nesterov=bool(train_cfg.nesterov),
    )
    return tx, schedule


@flax.struct.dataclass
class EmaState:
    """EMA copies of params and BN statistics; `updates` [] int32 counts EMA updates."""

    params: Any
    batch_stats: Any
    updates: jax.Array


def ema_init(params: Any, batch_stats: Any, updates: int = 0) -> EmaState:
    """The EMA starts as a copy of the model (official `ModelEMA.__init__`, float32)."""
    copy = lambda tree: jax.tree.map(lambda x: jnp.array(x, jnp.float32), tree)  # noqa: E731
    return EmaState(copy(params), copy(batch_stats), jnp.asarray(updates, jnp.int32))


def ema_decay_at(updates: jax.Array, decay: float = 0.9998) -> jax.Array:
    """Official ramp d(u) = decay * (1 - exp(-u / 2000)), float32; as -expm1 because
    1 - exp(x) in float32 loses ~1e-4 relative for small u (torch computes it in float64)."""
    return decay * -jnp.expm1(-jnp.asarray(updates, jnp.float32) / EMA_RAMP)


def ema_update(ema: EmaState, params: Any, batch_stats: Any, decay: float = 0.9998) -> EmaState:
    """Official `ModelEMA.update` with the model state after an optimizer step."""
    updates = ema.updates + 1
    d = ema_decay_at(updates, decay)

    def mix(v, m):
        return (d * v + (1.0 - d) * jnp.asarray(m, jnp.float32)).astype(v.dtype)

    return EmaState(
        jax.tree.map(mix, ema.params, params),
        jax.tree.map(mix, ema.batch_stats, batch_stats),
        updates,
    )
