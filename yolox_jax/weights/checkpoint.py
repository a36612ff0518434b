"""Model checkpoints: our orbax export folder, official `.pth` files, and training workdirs.

An exported checkpoint is a folder with `variables/` (orbax, {'params', 'batch_stats'}) and
`config.json` (the ml_collections config). Both are written to temporary names and renamed, so a
crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from yolox_jax.config import as_config, config_from_json, config_to_json


class CheckpointNotFound(FileNotFoundError):
    pass


def save_checkpoint(
    directory: str | os.PathLike, variables: Any, config: ml_collections.ConfigDict
) -> Path:
    """Write `variables` ({'params', 'batch_stats'}) and `config` to `directory` (replaced)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tree = jax.tree.map(np.asarray, jax.device_get(
        {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    ))
    # Written by the calling process alone (the trainer exports from process 0 of a multi-host
    # run): orbax's barriers then wait for no other process.
    me = jax.process_index()
    ckptr = ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))
    ckptr.save(tmp / "variables", tree)
    ckptr.wait_until_finished()
    (tmp / "config.json").write_text(config_to_json(config))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


def _load_exported(directory: Path) -> tuple[dict, ml_collections.ConfigDict]:
    import orbax.checkpoint as ocp

    config = config_from_json((directory / "config.json").read_text())
    variables = ocp.StandardCheckpointer().restore(directory / "variables")
    return dict(variables), config


def load_torch_checkpoint(
    path: str | os.PathLike, config: ml_collections.ConfigDict | str | None = None
) -> tuple[dict, ml_collections.ConfigDict]:
    """An official `.pth` (any of its layouts) -> (variables, config), without torch."""
    from yolox_jax.weights.convert import (
        WeightsError,
        config_for_state_dict,
        from_torch_state_dict,
    )
    from yolox_jax.weights.torch_io import extract_state_dict, load_torch_file

    path = Path(path)
    state_dict = extract_state_dict(load_torch_file(path), str(path))
    try:
        config = config_for_state_dict(state_dict, config)
        variables = from_torch_state_dict(state_dict, config, source=str(path))
    except WeightsError as e:
        if str(path) in str(e):
            raise
        raise WeightsError(f"{path}: {e}") from None
    return variables, config


def load_checkpoint(
    path: str | os.PathLike, config: ml_collections.ConfigDict | str | None = None
) -> tuple[Any, dict, ml_collections.ConfigDict]:
    """(model, variables, config) from an exported folder, a training workdir (its latest
    checkpoint's EMA weights) or an official `.pth`. `config` None: taken from the checkpoint
    (or inferred from an official state dict)."""
    from yolox_jax.models.yolox import build_model

    p = Path(path)
    if not p.exists():
        raise CheckpointNotFound(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        if (p / "config.json").exists() and (p / "variables").exists():
            variables, saved = _load_exported(p)
        elif (p / "checkpoints").is_dir():
            from yolox_jax.train.checkpointing import load_inference_variables

            variables, saved = load_inference_variables(p)
        else:
            raise CheckpointNotFound(
                f"{p} is neither an exported checkpoint (config.json + variables/) nor a "
                "training workdir (checkpoints/)"
            )
        if config is not None:
            saved = as_config(config)
    else:
        variables, saved = load_torch_checkpoint(p, config)
    model = build_model(saved)
    return model, variables, saved
