"""Official PyTorch state dicts <-> Flax variables.

Flax module names mirror the official module paths, so the mapping is mechanical: a parameter
path joined with '.' is the official key, with the leaf renamed (conv `kernel` HWIO <-> `weight`
OIHW, BN `scale` <-> `weight`, `mean`/`var` in `batch_stats` <-> `running_mean`/`running_var`).
Only this module (and the tests) know about the NCHW/OIHW layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from yolox_jax.config import VARIANTS, as_config, variant_config

_PARAM_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_LEAF = {"mean": "running_mean", "var": "running_var"}


class WeightsError(ValueError):
    """A state dict that does not fit the model (missing/unexpected keys, wrong shapes)."""


def flatten_tree(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dicts -> {path tuple: leaf}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def unflatten_tree(flat: Mapping[tuple[str, ...], Any]) -> dict:
    """Inverse of `flatten_tree`."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """('params', ('backbone', 'backbone', 'stem', 'conv', 'conv', 'kernel')) ->
    'backbone.backbone.stem.conv.conv.weight'."""
    table = _PARAM_LEAF if collection == "params" else _STAT_LEAF
    return ".".join((*path[:-1], table[path[-1]]))


def to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":  # HWIO -> OIHW (depthwise: [k, k, 1, C] -> [C, 1, k, k])
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
    return np.asarray(value)


def from_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
    return np.asarray(value)


def variable_shapes(config: ml_collections.ConfigDict, num_classes: int | None = None) -> dict:
    """The {'params', 'batch_stats'} shape tree of a config's model, without allocating it."""
    from yolox_jax.models.yolox import build_model

    model = build_model(config, num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    return {k: shapes[k] for k in ("params", "batch_stats")}


def expected_torch_shapes(config: ml_collections.ConfigDict, num_classes: int | None = None
                          ) -> dict[str, tuple[int, ...]]:
    """Official key -> OIHW shape for a config (num_batches_tracked excluded)."""
    out = {}
    for col, tree in variable_shapes(config, num_classes).items():
        for path, sds in flatten_tree(tree).items():
            shape = sds.shape
            if path[-1] == "kernel":
                shape = (shape[3], shape[2], shape[0], shape[1])
            out[torch_key(col, path)] = tuple(shape)
    return out


def _without_counters(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def describe_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture facts read off a state dict: arch, width, depth, depthwise, num_classes."""
    sd = state_dict
    if "head.cls_preds.0.weight" not in sd:
        raise WeightsError(
            "not a YOLOX state dict: no 'head.cls_preds.0.weight' key "
            f"(first keys: {list(sd)[:5]})"
        )
    num_classes = int(np.shape(sd["head.cls_preds.0.weight"])[0])
    if "backbone.backbone.stem.0.conv.weight" in sd:
        return dict(arch="darknet53", num_classes=num_classes)
    stem = "backbone.backbone.stem.conv.conv.weight"
    if stem not in sd:
        raise WeightsError(f"unrecognised YOLOX backbone: neither {stem!r} nor a Darknet stem")
    width = np.shape(sd[stem])[0] / 64.0
    depthwise = any(".dconv." in k for k in sd)
    n3 = len({k.split(".")[5] for k in sd if k.startswith("backbone.backbone.dark3.1.m.")})
    return dict(arch="cspdarknet", width=width, depthwise=depthwise, dark3_blocks=n3,
                num_classes=num_classes)


def infer_variant(state_dict: Mapping[str, Any]) -> tuple[str, int]:
    """(variant name, num_classes) of an official state dict, or a WeightsError."""
    facts = describe_state_dict(state_dict)
    if facts["arch"] == "darknet53":
        return "yolox_darknet53", facts["num_classes"]
    for name, v in VARIANTS.items():
        if v.get("arch", "cspdarknet") != "cspdarknet":
            continue
        if (
            int(v["width"] * 64) == int(facts["width"] * 64)
            and bool(v.get("depthwise", False)) == facts["depthwise"]
            and max(round(v["depth"] * 3), 1) * 3 == facts["dark3_blocks"]
        ):
            return name, facts["num_classes"]
    raise WeightsError(
        f"the state dict matches no official YOLOX variant (stem width {facts['width'] * 64:.0f}, "
        f"depthwise={facts['depthwise']}, {facts['dark3_blocks']} dark3 bottlenecks)"
    )


def config_for_state_dict(
    state_dict: Mapping[str, Any], config: ml_collections.ConfigDict | str | None = None
) -> ml_collections.ConfigDict:
    """The config an official state dict loads into (a resolved copy): `config` (ConfigDict,
    config file or variant name), or None: the variant inferred from its shapes. The number of
    classes always comes from the weights."""
    if config is None:
        name, num_classes = infer_variant(state_dict)
        config = variant_config(name)
    else:
        config = as_config(config)
        num_classes = describe_state_dict(state_dict)["num_classes"]
    config = config.copy_and_resolve_references()
    config.model.num_classes = num_classes
    return config


def num_classes_of(variables: Mapping[str, Any]) -> int:
    """The class count of a YOLOX's variables ({'params', ...}): its class-prediction bias."""
    return int(np.shape(variables["params"]["head"]["cls_preds.0"]["bias"])[0])


def check_state_dict(
    state_dict: Mapping[str, Any], config: ml_collections.ConfigDict, source: str = "state dict"
) -> None:
    """Raise one WeightsError listing every missing/unexpected key and shape mismatch."""
    sd = _without_counters(state_dict)
    try:
        _, num_classes = infer_variant(sd)
    except WeightsError:
        num_classes = int(config.model.num_classes)
    expected = expected_torch_shapes(config, num_classes)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k}: got {tuple(np.shape(sd[k]))}, expected {expected[k]}"
        for k in expected
        if k in sd and tuple(np.shape(sd[k])) != expected[k]
    ]
    if not (missing or unexpected or wrong):
        return
    hint = ""
    try:
        guess, _ = infer_variant(sd)
        if guess != config.name:
            hint = f" This looks like {guess}, not {config.name}: pass --config configs/{guess}.py."
    except WeightsError as e:
        hint = f" ({e})"

    def listing(title: str, items: list[str]) -> str:
        if not items:
            return ""
        more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + more

    raise WeightsError(
        f"{source} does not fit {config.name} with {num_classes} classes.{hint}"
        + listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("shape mismatches", wrong)
    )


def from_torch_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: ml_collections.ConfigDict | str | None = None,
    source: str = "state dict",
) -> dict[str, Any]:
    """Official state dict (numpy, any float dtype) -> {'params', 'batch_stats'} float32.

    `config` None infers the variant; the number of classes always comes from the weights.
    """
    sd = _without_counters(state_dict)
    config = config_for_state_dict(sd, config)
    num_classes = int(config.model.num_classes)
    check_state_dict(sd, config, source)
    variables = {}
    for col, tree in variable_shapes(config, num_classes).items():
        flat = {
            path: from_torch_layout(path, np.asarray(sd[torch_key(col, path)], np.float32))
            for path in flatten_tree(tree)
        }
        variables[col] = unflatten_tree(flat)
    return variables


def to_torch_state_dict(
    variables: Mapping[str, Any], config: ml_collections.ConfigDict | str | None = None
) -> dict[str, np.ndarray]:
    """{'params', 'batch_stats'} -> official state dict (float32 numpy, OIHW), with each BN's
    `num_batches_tracked` (int64 0) as the official modules have it."""
    params = flatten_tree(jax.device_get(variables["params"]))
    stats = flatten_tree(jax.device_get(variables["batch_stats"]))
    out: dict[str, np.ndarray] = {}
    for path, v in params.items():
        out[torch_key("params", path)] = to_torch_layout(path, np.asarray(v, np.float32))
        if path[-1] == "bias" and (*path[:-1], "mean") in stats:
            bn = path[:-1]
            out[torch_key("batch_stats", (*bn, "mean"))] = np.asarray(stats[(*bn, "mean")])
            out[torch_key("batch_stats", (*bn, "var"))] = np.asarray(stats[(*bn, "var")])
            out[".".join((*bn, "num_batches_tracked"))] = np.array(0, np.int64)
    if config is not None:
        check_state_dict(out, as_config(config), "exported state dict")
    return out
