"""YOLOX-Tiny (official `exps/default/yolox_tiny.py`)."""

from yolox_jax.config import variant_config


def get_config():
    return variant_config("yolox_tiny")
