"""Configs: the official `yolox_base` defaults plus one small table of per-variant changes.

`configs/yolox_<name>.py` files are thin `get_config()` wrappers over `variant_config(name)` so that
`python train.py --config configs/yolox_s.py --config.key=value` works, and so that the package can
build any variant by name without the `configs/` folder (an installed wheel has none).
"""

from __future__ import annotations

from typing import Any

import ml_collections

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

# Names users may type for a variant (the official exp names use dashes; darknet53 is "yolov3").
ALIASES = {"yolov3": "yolox_darknet53", "darknet53": "yolox_darknet53"}


def canonical_name(name: str) -> str:
    """'yolox-s', 'YOLOX_S', 's', 'yolov3' -> 'yolox_s' / 'yolox_darknet53'."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if not key.startswith("yolox_"):
        key = ALIASES.get(key, "yolox_" + key)
    if key not in VARIANTS:
        raise ValueError(
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
            dtype="float32",  # compute dtype; parameters stay float32
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            format="coco",  # "coco" or "voc"
            data_dir="",
            train_ann="instances_train2017.json",
            val_ann="instances_val2017.json",
            train_images="train2017",
            val_images="val2017",
            voc_train_split="trainval",
            voc_val_split="test",
            class_names=(),  # empty: COCO names (or the VOC/json categories)
            input_size=(640, 640),  # (height, width)
            test_size=(640, 640),
            multiscale_range=5,
            random_size=(),  # official `random_size` (in units of 32); overrides multiscale_range
            max_labels=120,
            num_workers=4,
            cache="",  # "", "ram" or "disk"
            cache_dir="",  # disk cache root; "": $XDG_CACHE_HOME/yolox_jax/images
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
    """Run a `configs/*.py` file's `get_config()` (the ml_collections config_flags convention)."""
    import importlib.util
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_yolox_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config()")
    return module.get_config()
