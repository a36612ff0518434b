"""YOLOX-X (official `exps/default/yolox_x.py`)."""

from yolox_jax.config import variant_config


def get_config():
    return variant_config("yolox_x")
