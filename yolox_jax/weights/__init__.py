"""Weights: the safe `.pth` reader/writer, the official <-> Flax mapping, and checkpoints."""

from yolox_jax.weights.convert import (
    WeightsError,
    check_state_dict,
    from_torch_state_dict,
    infer_variant,
    to_torch_state_dict,
)

__all__ = [
    "WeightsError",
    "check_state_dict",
    "from_torch_state_dict",
    "infer_variant",
    "to_torch_state_dict",
]
