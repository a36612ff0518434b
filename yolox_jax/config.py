"""Configs: the official `yolox_base` defaults plus one small table of per-variant changes.

`configs/yolox_<name>.py` files are thin `get_config()` wrappers over `variant_config(name)` so that
`python train.py --config configs/yolox_s.py --config.key=value` works, and so that the package can
build any variant by name without the `configs/` folder (an installed wheel has none).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config key or value that cannot be used (the message names the key and what is
    expected)."""

# Per-variant overrides of the base defaults, as in the official `exps/default/*.py`.
VARIANTS: dict[str, dict[str, Any]] = {
    "yolox_nano": dict(
        depth=0.33, width=0.25, depthwise=True,
        input_size=(416, 416), test_size=(416, 416), random_size=(10, 20),
        mosaic_scale=(0.5, 1.5), mosaic_prob=0.5, enable_mixup=False,
    ),
    "yolox_tiny": dict(
        depth=0.33, width=0.375,
        input_size=(416, 416), test_size=(416, 416), random_size=(10, 20),
        mosaic_scale=(0.5, 1.5), enable_mixup=False,
    ),
    "yolox_s": dict(depth=0.33, width=0.50),
    "yolox_m": dict(depth=0.67, width=0.75),
    "yolox_l": dict(depth=1.0, width=1.0),
    "yolox_x": dict(depth=1.33, width=1.25),
    # YOLOX-Darknet53 (official `exps/default/yolov3.py`): Darknet-53 + YOLOFPN, LeakyReLU(0.1).
    "yolox_darknet53": dict(depth=1.0, width=1.0, arch="darknet53", act="lrelu"),
}

# Values the training code accepts (train/optim.py imports SCHEDULERS, train/simota.py
# ASSIGNMENT_RULES).
SCHEDULERS = ("yoloxwarmcos",)
ASSIGNMENT_RULES = ("center_radius", "box_or_center")

# Names users may type for a variant (the official exp names use dashes; darknet53 is "yolov3").
ALIASES = {"yolov3": "yolox_darknet53", "darknet53": "yolox_darknet53"}


def canonical_name(name: str) -> str:
    """'yolox-s', 'YOLOX_S', 's', 'yolov3' -> 'yolox_s' / 'yolox_darknet53'."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if not key.startswith("yolox_"):
        key = ALIASES.get(key, "yolox_" + key)
    if key not in VARIANTS:
        raise ConfigError(
            f"unknown YOLOX variant {name!r}; expected one of {sorted(VARIANTS)} (or 'yolov3')"
        )
    return key


def base_config() -> ml_collections.ConfigDict:
    """The official `yolox/exp/yolox_base.py` defaults (yolox_l), grouped by concern."""
    c = ml_collections.ConfigDict()
    c.name = "yolox_l"
    c.seed = 0

    c.model = ml_collections.ConfigDict(
        dict(
            arch="cspdarknet",  # or "darknet53"
            num_classes=80,
            depth=1.0,
            width=1.0,
            act="silu",
            depthwise=False,
            bn_eps=1e-3,
            bn_momentum=0.03,  # torch convention; Flax momentum = 1 - 0.03
            prior_prob=1e-2,
            # compute dtype; parameters, gradients and optimizer state stay float32. "auto":
            # bfloat16 on GPU/TPU, float32 on CPU (no bfloat16 units; it is slower there).
            dtype="auto",
            kernels="auto",  # "auto": CPU formulations on CPU, XLA convolutions elsewhere
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            format="coco",  # "coco", "voc" or "yolo"
            data_dir="",
            yaml="",  # YOLO: the data.yaml (default: data_dir/data.yaml)
            yolo_train_split="train",  # YOLO: data.yaml keys of the splits
            yolo_val_split="val",
            train_ann="instances_train2017.json",
            val_ann="instances_val2017.json",
            train_images="train2017",
            val_images="val2017",
            voc_train_split="trainval",
            voc_val_split="test",
            # Packed ArrayRecord shard sets (`python -m yolox_jax.data.pack`), local paths or
            # URLs (gs://...): when set, they replace the folder layout above for that split.
            train_shards="",
            val_shards="",
            shards_local_dir="",  # copy remote sets here first ("": gs:// read in place)
            class_names=(),  # empty: COCO names (or the VOC/json categories)
            input_size=(640, 640),  # (height, width)
            test_size=(640, 640),
            multiscale_range=5,
            random_size=(),  # official `random_size` (in units of 32); overrides multiscale_range
            max_labels=120,
            num_workers=4,
            cache="",  # "", "ram" or "disk"
            cache_dir="",  # disk cache root; "": $YOLOX_JAX_HOME/images (yolox_jax.home)
            legacy=False,
            # augmentation (official names and values)
            mosaic_prob=1.0,
            mixup_prob=1.0,
            hsv_prob=1.0,
            flip_prob=0.5,
            degrees=10.0,
            translate=0.1,
            mosaic_scale=(0.1, 2.0),
            enable_mixup=True,
            mixup_scale=(0.5, 1.5),
            shear=2.0,
        )
    )

    c.train = ml_collections.ConfigDict(
        dict(
            batch_size=64,  # global batch
            max_epoch=300,
            warmup_epochs=5,
            warmup_lr=0.0,
            min_lr_ratio=0.05,
            basic_lr_per_img=0.01 / 64.0,
            scheduler="yoloxwarmcos",
            no_aug_epochs=15,
            ema=True,
            ema_decay=0.9998,
            weight_decay=5e-4,
            momentum=0.9,
            nesterov=True,
            print_interval=10,
            eval_interval=10,
            eval_at_start=False,  # also evaluate the initial weights (fine-tuning curves)
            keep_checkpoints=3,
            save_interval_steps=0,  # also save every N steps (a preemption loses < N); 0: off
            bn_sync="global",  # BN statistics over the global batch, or "device" (official DDP)
            compile_workers=0,  # threads compiling the multi-scale shapes up front; 0: auto
            iters_per_epoch=0,  # 0: derived from the dataset size
            assignment_rule="center_radius",  # or "box_or_center" (rule of the released weights)
            # None: the rule's own radius (1.5 strides; 2.5 for "box_or_center")
            center_radius=ml_collections.config_dict.placeholder(float),
            init_from="",
            distributed=False,
            coordinator_address="",
            num_processes=1,
            process_id=0,
            compilation_cache=True,
            plot=True,  # workdir/results.png (losses, lr, mAP per epoch) when a run ends
        )
    )

    c.test = ml_collections.ConfigDict(
        dict(conf=0.01, nms=0.65, class_agnostic=False, pre_nms_topk=1000, max_det=300)
    )
    return c


def variant_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The base config with the official per-variant values applied."""
    name = canonical_name(name)
    c = base_config()
    c.name = name
    values = dict(VARIANTS[name], **overrides)
    model_keys = set(c.model.keys())
    for key, value in values.items():
        if key in model_keys:
            c.model[key] = value
        elif key in c.data:
            c.data[key] = value
        else:
            raise KeyError(f"variant override {key!r} for {name} matches no config field")
    return c


def as_config(config_or_name: Any) -> ml_collections.ConfigDict:
    """Accept a ConfigDict, a variant name, or a `configs/*.py` path."""
    if isinstance(config_or_name, ml_collections.ConfigDict):
        return config_or_name
    if isinstance(config_or_name, str):
        if config_or_name.endswith(".py"):
            return load_config_file(config_or_name)
        return variant_config(config_or_name)
    raise TypeError(
        f"expected a ConfigDict, a variant name or a config .py path, got {type(config_or_name)}"
    )


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Run a `configs/*.py` file's `get_config()` (the ml_collections config_flags convention:
    `file.py:arg` calls `get_config("arg")`)."""
    import importlib.util
    import os

    file, sep, arg = path.partition(":")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"config file {file!r} does not exist")
    spec = importlib.util.spec_from_file_location("_yolox_jax_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {file!r} defines no get_config()")
    config = module.get_config(arg) if sep else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {file!r}: get_config() returned "
                          f"{type(config).__name__}, not a ConfigDict")
    return config


# ---------------------------------------------------------------------------------- json
def config_to_json(config: ml_collections.ConfigDict) -> str:
    """The config as json (sorted keys): what checkpoints and workdirs store."""
    return config.to_json_best_effort(indent=2, sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `config_to_json` (json lists come back as tuples: sizes, ranges, names)."""

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    return ml_collections.ConfigDict(tuples(json.loads(text)))


# ----------------------------------------------------------------------------- validation
def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every leaf key, dotted ("train.batch_size", ...)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from flat_keys(value, name + ".")
        else:
            yield name


def unknown_key_message(key: str, known: Iterator[str] | list[str]) -> str:
    """`unknown config key 'train.bogus'; did you mean 'train.xxx'?` (difflib closest), else the
    valid keys of that section."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return f"unknown config key {key!r}; did you mean {close[0]!r}?"
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in known if section and k.startswith(section)]
    listed = siblings or sorted({k.split(".", 1)[0] for k in known})
    return (f"unknown config key {key!r}; valid keys"
            + (f" of {section[:-1]!r}" if siblings else "") + ": " + ", ".join(listed))


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Every key of `config` must exist in `base_config()` (a typo in a config file would
    otherwise be silently ignored)."""
    known = set(flat_keys(base_config()))
    sections = {k.split(".", 1)[0] for k in known}
    for key in flat_keys(config):
        if key in known or key in sections:
            continue
        raise ConfigError(unknown_key_message(key, known))


def _size_pair(value: Any, key: str, positive_multiple_of: int = 32) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be (height, width), got {value!r}") from None
    if h <= 0 or w <= 0 or h % positive_multiple_of or w % positive_multiple_of:
        raise ConfigError(f"{key} must be (height, width), positive multiples of "
                          f"{positive_multiple_of}, got {tuple(value)!r}")
    return h, w


def _check(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


MODEL_DTYPES = ("auto", "float32", "bfloat16")


def validate_config(
    config: ml_collections.ConfigDict, num_devices: int | None = None, *, training: bool = True
) -> ml_collections.ConfigDict:
    """Check keys and values before any data is read or any model is built; raise ConfigError
    naming the key and what is expected. `num_devices`: the global batch must split over them.
    `training` False skips the training-only checks (evaluation / prediction configs)."""
    check_keys(config)
    m, d, t, te = config.model, config.data, config.train, config.test
    canonical_name(config.name)
    _check(m.arch in ("cspdarknet", "darknet53"), "model.arch", "'cspdarknet' or 'darknet53'",
           m.arch)
    _check(m.act in ("silu", "relu", "lrelu"), "model.act", "'silu', 'relu' or 'lrelu'", m.act)
    _check(isinstance(m.num_classes, int) and m.num_classes >= 1, "model.num_classes",
           "a positive integer", m.num_classes)
    for key in ("depth", "width"):
        _check(float(m[key]) > 0, f"model.{key}", "> 0", m[key])
    _check(m.dtype in MODEL_DTYPES, "model.dtype",
           "'auto', 'float32' or 'bfloat16' (float16 would need loss scaling; bfloat16 has "
           "float32's exponent range and the same speed on GPUs and TPUs)", m.dtype)
    _check(d.format in ("coco", "voc", "yolo"), "data.format", "'coco', 'voc' or 'yolo'",
           d.format)
    _size_pair(d.test_size, "data.test_size")
    names = tuple(d.class_names)
    _check(not names or len(names) == m.num_classes, "data.class_names",
           f"empty or {m.num_classes} names (model.num_classes)", names)
    _check(len(set(names)) == len(names), "data.class_names", "names without duplicates", names)
    _check(0 <= float(te.conf) <= 1, "test.conf", "in [0, 1]", te.conf)
    _check(0 <= float(te.nms) <= 1, "test.nms", "in [0, 1]", te.nms)
    for key in ("pre_nms_topk", "max_det"):
        _check(int(te[key]) >= 1, f"test.{key}", "a positive integer", te[key])
    if not training:
        return config
    h, _ = _size_pair(d.input_size, "data.input_size")
    rs = tuple(d.random_size)
    if rs:
        _check(len(rs) == 2 and 1 <= int(rs[0]) <= int(rs[1]), "data.random_size",
               "() or (lo, hi) in units of 32 with 1 <= lo <= hi", rs)
    else:
        _check(int(d.multiscale_range) >= 0 and h // 32 - int(d.multiscale_range) >= 1,
               "data.multiscale_range", f"in 0..{h // 32 - 1} for input height {h}",
               d.multiscale_range)
    for key in ("mosaic_prob", "mixup_prob", "hsv_prob", "flip_prob"):
        _check(0 <= float(d[key]) <= 1, f"data.{key}", "a probability in [0, 1]", d[key])
    for key in ("mosaic_scale", "mixup_scale"):
        v = tuple(d[key])
        _check(len(v) == 2 and 0 < float(v[0]) <= float(v[1]), f"data.{key}",
               "(lo, hi) with 0 < lo <= hi", v)
    _check(int(d.max_labels) >= 1, "data.max_labels", "a positive integer", d.max_labels)
    _check(int(d.num_workers) >= 0, "data.num_workers", ">= 0", d.num_workers)
    _check(d.cache in ("", "ram", "disk"), "data.cache", "'', 'ram' or 'disk'", d.cache)
    _check(bool(d.data_dir) or (d.format == "yolo" and bool(d.yaml)), "data.data_dir",
           "the dataset root (--config.data.data_dir=...)"
           + (" or data.yaml" if d.format == "yolo" else ""), d.data_dir)
    _check(isinstance(t.batch_size, int) and t.batch_size >= 1, "train.batch_size",
           "a positive integer", t.batch_size)
    if num_devices is not None and t.batch_size % int(num_devices):
        raise ConfigError(f"train.batch_size {t.batch_size} must be divisible by the "
                          f"{num_devices} devices (it is the global batch, split over them)")
    _check(int(t.max_epoch) >= 1, "train.max_epoch", "a positive number of epochs", t.max_epoch)
    for key in ("warmup_epochs", "no_aug_epochs", "iters_per_epoch", "save_interval_steps"):
        _check(int(t[key]) >= 0, f"train.{key}", ">= 0", t[key])
    for key in ("print_interval", "eval_interval", "keep_checkpoints"):
        _check(int(t[key]) >= 1, f"train.{key}", "a positive integer", t[key])
    for key in ("basic_lr_per_img", "weight_decay", "warmup_lr"):
        _check(float(t[key]) >= 0, f"train.{key}", ">= 0", t[key])
    _check(0 <= float(t.min_lr_ratio) <= 1, "train.min_lr_ratio", "in [0, 1]", t.min_lr_ratio)
    _check(0 <= float(t.momentum) < 1, "train.momentum", "in [0, 1)", t.momentum)
    _check(0 < float(t.ema_decay) < 1, "train.ema_decay", "in (0, 1)", t.ema_decay)
    _check(t.scheduler in SCHEDULERS, "train.scheduler", f"one of {SCHEDULERS}", t.scheduler)
    _check(t.assignment_rule in ASSIGNMENT_RULES, "train.assignment_rule",
           f"one of {ASSIGNMENT_RULES}", t.assignment_rule)
    _check(t.center_radius is None or float(t.center_radius) > 0, "train.center_radius",
           "None or > 0", t.center_radius)
    return config
