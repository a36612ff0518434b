"""The one device mesh of training, evaluation and inference: 1-D, batch axis `data`.

The batch is split over `data`; weights, optimizer state and scalars are replicated. Built as
`Mesh(...)` directly (recent `jax.make_mesh` defaults to explicit axis types).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all global devices) with the batch axis `data`."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays [B, ...] split over `data` on their first axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full array on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())
