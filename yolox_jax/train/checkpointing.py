"""Training checkpoints: an orbax CheckpointManager under `workdir/checkpoints`.

Each step folder holds the whole `TrainState` (params, EMA, optimizer state, step, RNG) and, as
json, where the data stream is (epoch, next batch) and the run's metrics. Saves are async and
atomic: orbax writes `<step>.orbax-checkpoint-tmp`, renames it to `<step>` once every file is
written, and deletes checkpoints beyond the latest `keep` only after that, so a crash, SIGTERM or
SIGKILL during a save never loses the last complete checkpoint (tested by killing a run inside
the commit: tests/test_trainer_processes.py). Left-over temporary folders of a killed save are
removed when the next run opens the directory. The best-AP EMA weights are exported separately
to `workdir/best` by the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from yolox_jax.config import config_from_json, config_to_json


class TrainCheckpointer:
    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict,
             config: ml_collections.ConfigDict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave({**meta, "config": config_to_json(config)}),
            ),
            force=True,
        )

    def restore(self, state_template: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out.state, dict(out.data), dict(out.meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_inference_variables(workdir: str | Path, step: int | None = None
                             ) -> tuple[dict, ml_collections.ConfigDict]:
    """EMA variables (or the raw ones when EMA is off) and config of a workdir's latest (or
    `step`) checkpoint, without knowing the optimizer structure, onto this process's first
    device: a checkpoint written by a multi-host run (another topology) loads on one machine."""
    from jax.sharding import SingleDeviceSharding

    directory = Path(workdir).absolute() / "checkpoints"
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory} holds no checkpoint")
    tree = manager.item_metadata(step)["state"]
    device = SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            getattr(tree, "tree", tree))
    out = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                meta=ocp.args.JsonRestore()),
    )
    state, meta = out.state, out.meta
    config = config_from_json(meta["config"])
    ema = state.get("ema")
    if ema:
        variables = {"params": ema["params"], "batch_stats": ema["batch_stats"]}
    else:
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    manager.close()
    return variables, config
