"""Device prefetch: the next global batches are placed on the mesh while the current step runs.

As `flax.jax_utils.prefetch_to_device`, but for global arrays over a (multi-host) mesh: each
process hands over only its own rows (`jax.make_array_from_process_local_data`, as
`step.global_batch`). The copies are asynchronous; with `size=2`, while step N runs the batches
N + 1 and N + 2 are on (or on their way to) the devices, and the host already prepares N + 3.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
from jax.sharding import Mesh


@dataclasses.dataclass(frozen=True)
class DeviceBatch:
    """images [B, H, W, 3] and labels [B, G, 5] as global arrays sharded over `data` (B the
    global batch); epoch, batch_index and stats from the host `Batch`."""

    images: jax.Array
    labels: jax.Array
    epoch: int
    batch_index: int
    stats: dict[str, Any]


def prefetch_to_mesh(batches: Iterable[Any], mesh: Mesh, size: int = 2) -> Iterator[DeviceBatch]:
    """Host batches (`pipeline.Batch`: this process's rows) -> `DeviceBatch`es, `size` ahead."""
    from yolox_jax.train.step import global_batch

    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    queue: collections.deque[DeviceBatch] = collections.deque()
    batches = iter(batches)

    def enqueue(n: int) -> None:
        for b in itertools.islice(batches, n):
            images, labels = global_batch(mesh, b.images, b.labels)
            queue.append(DeviceBatch(images, labels, b.epoch, b.batch_index, b.stats))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
