"""Stop requests (SIGTERM / SIGINT) that every host of a multi-host run agrees on.

A scheduler preempting a multi-host job may signal only some of its hosts, and each host sees
its signal at a different step. Saving then needs all hosts at the same step (orbax saves are
collective). `StopAgreement.dispatch` turns each host's flag into one value for all: a tiny
jitted max over a global array holding every host's flag, dispatched after each step like the
step itself (asynchronous, no host sync). Its result is read with that step's metrics, one step
later (`trainer`), so every host learns "some host wants to stop" at the same step and stops
after the same next one. A single-process run needs no collective and reads its flag directly.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh


class StopSignal:
    """Records SIGTERM / SIGINT (context manager); the training loop polls `requested`."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopSignal:
        for s in self.signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with their old handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class StopAgreement:
    """`dispatch(flag)` -> a handle; `resolve(fetched handle, flag)` -> whether any host asked.

    With one process the handle is None and `resolve` returns the local flag as it is now.
    With several, the handle is a replicated int32 scalar: the max over all hosts' flags
    (every local device of a host contributes that host's flag), fetched by the caller together
    with the step's metrics.
    """

    def __init__(self, mesh: Mesh):
        from yolox_jax.sharding import batch_sharding, replicated

        self.mesh = mesh
        self.multi = jax.process_count() > 1
        self._sharding = batch_sharding(mesh)
        self._local = len(mesh.local_devices)
        self._any = jax.jit(lambda flags: jnp.max(flags), out_shardings=replicated(mesh))

    def dispatch(self, flag: bool) -> jax.Array | None:
        if not self.multi:
            return None
        local = np.full((self._local,), int(bool(flag)), np.int32)
        return self._any(jax.make_array_from_process_local_data(self._sharding, local))

    @staticmethod
    def resolve(fetched: Any, flag: bool) -> bool:
        return bool(flag) if fetched is None else bool(int(np.asarray(fetched)))
