"""Fold each BatchNorm into the conv before it: the deployed network (and ONNX graph) has one
biased conv per `BaseConv` and no BatchNorm arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _bn_eps(model_or_config: Any) -> float:
    if model_or_config is None:
        return 1e-3
    if isinstance(model_or_config, (int, float)):
        return float(model_or_config)
    if hasattr(model_or_config, "bn_eps"):  # a YOLOX module
        return float(model_or_config.bn_eps)
    return float(model_or_config.model.bn_eps)  # an ml_collections config


def fold_batchnorm(variables: Mapping[str, Any], model_or_config: Any = None) -> dict[str, Any]:
    """{'params', 'batch_stats'} -> {'params'} with every `BaseConv` BN folded into its conv.

    For each layer with `conv.kernel` [kh, kw, I/g, O] and a `bn` (scale, bias; running mean, var),
    with s = scale / sqrt(var + eps): kernel' = kernel * s (per output channel), bias' = bias -
    mean * s, computed in float64 and stored as float32. eps is the model's (`bn_eps`, default 1e-3;
    pass the model, its config, or the number). Pure: the input is not modified. The result runs
    through the same modules (`BaseConv` recognises folded variables), in inference only.
    """
    eps = _bn_eps(model_or_config)
    params = jax.device_get(variables["params"])
    stats = jax.device_get(variables.get("batch_stats", {}))
    count = 0

    def walk(p: Mapping[str, Any], s: Mapping[str, Any], path: str) -> dict[str, Any]:
        nonlocal count
        out: dict[str, Any] = {}
        if "bn" in p and "conv" in p and "kernel" in p["conv"]:
            bn, bs = p["bn"], s.get("bn", {})
            if "mean" not in bs or "var" not in bs:
                raise ValueError(f"fold_batchnorm: {path}/bn has no running statistics "
                                 "(batch_stats mean / var)")
            kernel = np.asarray(p["conv"]["kernel"], np.float64)
            scale = np.asarray(bn["scale"], np.float64) / np.sqrt(
                np.asarray(bs["var"], np.float64) + eps)
            if kernel.shape[-1] != scale.shape[0]:
                raise ValueError(f"fold_batchnorm: {path}: conv has {kernel.shape[-1]} output "
                                 f"channels but its BatchNorm {scale.shape[0]}")
            out["conv"] = {
                "kernel": (kernel * scale).astype(np.float32),
                "bias": (np.asarray(bn["bias"], np.float64)
                         - np.asarray(bs["mean"], np.float64) * scale).astype(np.float32),
            }
            count += 1
            rest = {k: v for k, v in p.items() if k not in ("conv", "bn")}
        else:
            rest = dict(p)
        for k, v in rest.items():
            if isinstance(v, Mapping):
                out[k] = walk(v, s.get(k, {}) if isinstance(s, Mapping) else {}, f"{path}/{k}")
            else:
                out[k] = np.asarray(v)
        return out

    folded = walk(params, stats, "params")
    if count == 0:
        raise ValueError("fold_batchnorm: no conv + BatchNorm layer found in the variables "
                         "(already folded?)")
    return {"params": folded}


def is_folded(variables: Mapping[str, Any]) -> bool:
    """True when the variables carry no BatchNorm (already folded)."""
    def has_bn(tree: Any) -> bool:
        return isinstance(tree, Mapping) and ("bn" in tree or any(has_bn(v)
                                                                  for v in tree.values()))
    return not has_bn(variables.get("params", {}))
