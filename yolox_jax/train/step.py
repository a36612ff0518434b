"""The sharded train step: one `jax.jit` over a device mesh with the batch split on `data`.

Parameters, optimizer state and EMA are replicated; the batch is sharded. Because the step is a
single jit over *global* arrays, BatchNorm statistics (and the loss normaliser num_fg) are over
the global batch: synchronised BN (`bn_sync="global"`, the default), so any device count gives
the single-device result up to float summation order (the official single-GPU run is what this
equals).

`bn_sync="device"` is the official multi-GPU trainer instead (per-GPU BN, DDP): the forward and
backward run per device under `shard_map` over `data`, BN normalises with each device's batch
statistics, the losses are normalised by each device's own num_fg, and the gradients are
averaged over devices (`pmean`, as DDP's all-reduce). The BN running statistics are averaged over
devices too: the replicated state must be identical on every device, and the mean of the
per-device running means is the running mean of the global batch (the update is linear), where
device 0's alone (what the official rank 0 saves) would use 1 / n of the data. Fewer collectives
than "global" (one gradient all-reduce instead of one per BN layer, forward and backward).

The state is donated: put it on the mesh first
(`jax.device_put(state, replicated(mesh))`), or the first call compiles for the uncommitted
input and the second again for the replicated output.

Mixed precision: build the model with `dtype=bfloat16`; parameters, gradients, optimizer state,
EMA, BN statistics, SimOTA and the losses stay float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from yolox_jax.sharding import DATA_AXIS, batch_sharding, make_mesh, replicated
from yolox_jax.train.state import TrainState

__all__ = ["BN_SYNC", "DATA_AXIS", "batch_sharding", "global_batch", "make_mesh",
           "make_train_step", "replicated"]  # the mesh helpers re-exported (yolox_jax.sharding)

BN_SYNC = ("global", "device")


def global_batch(mesh: Mesh, *local_arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Global arrays from each process's slice of the batch (rows of this process only)."""
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in local_arrays)


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array],
    mesh: Mesh,
    *,
    rule: str = "center_radius",
    center_radius: float | None = None,
    ema_decay: float = 0.9998,
    bn_sync: str = "global",
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, images [B, H, W, 3] (uint8 or float, BGR 0..255), labels [B, G, 5],
    use_l1: bool, size: (h, w) | None) -> (state, metrics)`.

    `size` (static) resizes the batch on device first (multi-scale training, as the official
    `preprocess`); each distinct size compiles once. Losses and SimOTA run in float32.
    Step t uses the lr `schedule(t)` (optax's count, as the official trainer); `metrics["lr"]`
    is `schedule(t + 1)`, the lr the official trainer logs after step t (the next step's).
    `metrics["num_fg"]` is the total number of positives (not the official num_fg / num_gts).
    `bn_sync`: "global" (BN and num_fg over the global batch) or "device" (per device; see the
    module docstring). `step.lower(state, images, labels, size)` lowers the jitted step for
    ahead-of-time compilation (`yolox_jax.train.compile`); its executable serves later calls.
    """
    if bn_sync not in BN_SYNC:
        raise ValueError(f"bn_sync must be one of {BN_SYNC}, got {bn_sync!r}")
    from yolox_jax.data.multiscale import resize_batch
    from yolox_jax.train.losses import compute_losses
    from yolox_jax.train.optim import ema_update

    def step(state: TrainState, images, labels, use_l1: jax.Array, size):
        images = images.astype(jnp.float32)
        labels = labels.astype(jnp.float32)
        if size is not None and tuple(size) != tuple(images.shape[1:3]):
            images, labels = resize_batch(images, labels, tuple(size))

        def loss_fn(params, batch_stats, images, labels, use_l1):
            losses, new_bs = compute_losses(
                model, {"params": params, "batch_stats": batch_stats}, images, labels,
                use_l1=use_l1, train_bn=True, rule=rule, center_radius=center_radius,
            )
            return losses["total"], (losses, new_bs)

        grad_fn = jax.grad(loss_fn, has_aux=True)
        if bn_sync == "device":
            grad_fn = _per_device(grad_fn, mesh)
        grads, (losses, new_bs) = grad_fn(state.params, state.batch_stats, images, labels,
                                          use_l1)
        with jax.named_scope("optimizer"):  # named for the profile breakdown
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = (
                ema_update(state.ema, params, new_bs, decay=ema_decay)
                if state.ema is not None else None
            )
        metrics = dict(losses)
        metrics["lr"] = schedule(state.step + 1)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state, ema=ema
        )
        return new_state, metrics

    rep, data = replicated(mesh), batch_sharding(mesh)
    # jit refuses keyword arguments together with in_shardings: the flags are positional
    # static arguments of the jitted function and keywords of the wrapper.
    # use_l1 is a traced flag (one compilation serves the mosaic and the no-aug phase); size is
    # static (a new shape is a new program anyway).
    jitted = jax.jit(
        step,
        in_shardings=(rep, data, data, rep),
        out_shardings=(rep, rep),
        static_argnums=(4,),
        donate_argnums=(0,),
    )

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array,
                   use_l1: bool = False, size: tuple[int, int] | None = None
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        if getattr(state.step, "sharding", None) != rep:
            # A state not yet on the mesh would compile a second program on the next call.
            state = jax.device_put(state, rep)
        return jitted(state, images, labels, np.bool_(use_l1),
                      None if size is None else (int(size[0]), int(size[1])))

    def lower(state: TrainState, images: Any, labels: Any,
              size: tuple[int, int] | None = None) -> jax.stages.Lowered:
        """The step lowered for these (abstract or concrete) arguments, as `train_step` calls
        it (use_l1 is traced: one executable serves both phases)."""
        return jitted.lower(state, images, labels, np.bool_(False),
                            None if size is None else (int(size[0]), int(size[1])))

    train_step.jitted = jitted  # for cache inspection
    train_step.lower = lower
    return train_step


# Loss terms are averaged over devices (DDP logs rank 0's; the mean is the same estimate for
# all ranks); counts are summed.
_SUMMED_METRICS = ("num_fg", "num_gts")


def _per_device(grad_fn: Callable, mesh: Mesh) -> Callable:
    """`grad_fn(params, batch_stats, images, labels, use_l1)` run per device on its rows
    (per-device BN statistics and num_fg), gradients and new BN statistics averaged over `data`."""

    def local(params, batch_stats, images, labels, use_l1):
        # Parameters marked as varying over `data`: the gradient is then each device's own.
        # (Taken w.r.t. the replicated value, shard_map would already sum it over devices.)
        params = _varying(params)
        grads, (losses, new_bs) = grad_fn(params, batch_stats, images, labels, use_l1)
        grads = jax.lax.pmean(grads, DATA_AXIS)
        new_bs = jax.lax.pmean(new_bs, DATA_AXIS)
        losses = {k: (jax.lax.psum(v, DATA_AXIS) if k in _SUMMED_METRICS
                      else jax.lax.pmean(v, DATA_AXIS)) for k, v in losses.items()}
        return grads, (losses, new_bs)

    def _varying(tree):
        if hasattr(jax.lax, "pcast"):
            return jax.lax.pcast(tree, DATA_AXIS, to="varying")
        return jax.lax.pvary(tree, DATA_AXIS)  # jax < 0.8

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                         out_specs=(P(), (P(), P())))
