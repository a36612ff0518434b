"""YOLOX-Darknet53 (official `exps/default/yolov3.py`)."""

from yolox_jax.config import variant_config


def get_config():
    return variant_config("yolox_darknet53")
