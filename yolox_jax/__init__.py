"""yolox-jax: YOLOX in JAX/Flax with official-parity weights, inference, training and evaluation.

The public API is imported lazily so that `import yolox_jax` stays cheap for the command-line tools.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "build_model": "yolox_jax.models.yolox",
    "load_checkpoint": "yolox_jax.weights.checkpoint",
    "save_checkpoint": "yolox_jax.weights.checkpoint",
    "Predictor": "yolox_jax.inference",
    "export_onnx": "yolox_jax.export.exporter",
    "fold_batchnorm": "yolox_jax.export.fold",
    "compute_losses": "yolox_jax.train.losses",
    "weights": "yolox_jax.weights",
    "config": "yolox_jax.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'yolox_jax' has no attribute {name!r}")
