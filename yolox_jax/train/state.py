"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """params / batch_stats: the model's variables; opt_state: optax's; ema: the EMA of params
    and BN statistics (used for evaluation and export); rng: raw uint32 key data [2]."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any
    rng: jax.Array

    def variables(self, use_ema: bool = True) -> dict[str, Any]:
        if use_ema and self.ema is not None:
            return {"params": self.ema.params, "batch_stats": self.ema.batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(variables: dict[str, Any], tx: Any, seed: int, use_ema: bool = True
                       ) -> TrainState:
    from yolox_jax.train.optim import ema_init

    params, batch_stats = variables["params"], variables["batch_stats"]
    # Copies (jnp.array), not views: the train step donates the state, which would otherwise
    # delete the caller's `variables` buffers.
    params = jax.tree.map(lambda x: jnp.array(x, jnp.float32), params)
    batch_stats = jax.tree.map(lambda x: jnp.array(x, jnp.float32), batch_stats)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema=ema_init(params, batch_stats) if use_ema else None,
        rng=jax.random.key_data(jax.random.key(seed)),
    )
