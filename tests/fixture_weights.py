"""The fixtures' deterministic "gen weights" rule (../shared/fixtures/README.md), in numpy.

Every official state-dict entry gets values from `default_rng(crc32(key))`; BN running
statistics are then replaced by the calibrated ones stored with the fixtures.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_NAME = {"yolox_darknet53": "yolov3"}


def fixture_name(variant: str) -> str:
    return FIXTURE_NAME.get(variant, variant)


def gen_tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    if key.endswith("num_batches_tracked"):
        return np.array(0, np.int64)
    if ".bn." in key:
        leaf = key.rsplit(".", 1)[1]
        if leaf == "weight":
            v = 0.5 + rng.random(shape)
        elif leaf == "bias":
            v = 0.1 * rng.standard_normal(shape)
        elif leaf == "running_mean":
            v = 0.1 * rng.standard_normal(shape)
        elif leaf == "running_var":
            v = 0.5 + rng.random(shape)
        else:
            raise KeyError(key)
    elif key.endswith("weight") and len(shape) == 4:
        v = rng.standard_normal(shape) / np.sqrt(shape[1] * shape[2] * shape[3])
    elif key.endswith("bias") and len(shape) == 1:
        v = 0.1 * rng.standard_normal(shape)
    else:
        raise KeyError(f"no gen-weight rule for {key} {shape}")
    return v.astype(np.float32)


def fixture_state_dict(variant: str) -> dict[str, np.ndarray]:
    """The official state dict of a fixture model: gen weights + calibrated BN statistics."""
    name = fixture_name(variant)
    keys = json.loads((FIXTURES / "keys" / f"{name}.json").read_text())["state_dict"]
    sd = {k: gen_tensor(k, tuple(shape)) for k, shape, _ in keys}
    with np.load(FIXTURES / "weights" / f"{name}_bn_running.npz") as bn:
        for k in bn.files:
            sd[k] = bn[k].astype(np.float32)
    return sd
