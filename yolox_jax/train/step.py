"""The sharded train step: one `jax.jit` over a device mesh with the batch split on `data`.

Parameters, optimizer state and EMA are replicated; the batch is sharded. Because the step is a
single jit over *global* arrays, BatchNorm statistics (and the loss normaliser num_fg) are over
the global batch: synchronised BN, so any device count gives the single-device result up to
float summation order (the official multi-GPU trainer normalises BN per GPU; its single-GPU run
is what this equals). The state is donated: put it on the mesh first
(`jax.device_put(state, replicated(mesh))`), or the first call compiles for the uncommitted
input and the second again for the replicated output.

Mixed precision: build the model with `dtype=bfloat16`; parameters, gradients, optimizer state,
EMA, BN statistics, SimOTA and the losses stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from yolox_jax.train.state import TrainState

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices with the batch axis `data`."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


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
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, images [B, H, W, 3] (uint8 or float, BGR 0..255), labels [B, G, 5],
    use_l1: bool, size: (h, w) | None) -> (state, metrics)`.

    `size` (static) resizes the batch on device first (multi-scale training, as the official
    `preprocess`); each distinct size compiles once. Losses and SimOTA run in float32.
    Step t uses the lr `schedule(t)` (optax's count, as the official trainer); `metrics["lr"]`
    is `schedule(t + 1)`, the lr the official trainer logs after step t (the next step's).
    `metrics["num_fg"]` is the total number of positives (not the official num_fg / num_gts).
    """
    from yolox_jax.data.multiscale import resize_batch
    from yolox_jax.train.losses import compute_losses
    from yolox_jax.train.optim import ema_update

    def step(state: TrainState, images, labels, use_l1: jax.Array, size):
        images = images.astype(jnp.float32)
        labels = labels.astype(jnp.float32)
        if size is not None and tuple(size) != tuple(images.shape[1:3]):
            images, labels = resize_batch(images, labels, tuple(size))

        def loss_fn(params):
            losses, new_bs = compute_losses(
                model, {"params": params, "batch_stats": state.batch_stats}, images, labels,
                use_l1=use_l1, train_bn=True, rule=rule, center_radius=center_radius,
            )
            return losses["total"], (losses, new_bs)

        grads, (losses, new_bs) = jax.grad(loss_fn, has_aux=True)(state.params)
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

    train_step.jitted = jitted  # for lowering / cache inspection
    return train_step
