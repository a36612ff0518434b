"""Export a Flax YOLOX to ONNX with the official `tools/export_onnx.py` interface.

The graph input is `images` [N, 3, H, W] float32 (BGR 0..255 letterboxed as `ValTransform`, or
legacy-normalised RGB with legacy=True), the output `output` [N, A, 5 + C]: the official raw
layout (xy cell offsets, log wh, sigmoided obj and class scores) or, with decode_in_inference,
boxes (cx, cy, w, h) in input pixels. NMS stays outside the graph, as in the official export.
BatchNorm is folded into the convs; the network is the traced Flax model (no second
implementation). The command line is `yolox-jax export` (`yolox_jax/cli/export.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from yolox_jax.export.onnx import MAX_OPSET, MIN_OPSET


class ExportUsageError(ValueError):
    """A bad export argument or input file: printed as one line, exit code 2."""


def export_onnx(
    model: Any,
    variables: Any,
    config: Any = None,
    *,
    input_size: Sequence[int] = (416, 416),
    batch: int = 1,
    dynamic: bool = False,
    decode_in_inference: bool = False,
    opset: int = 11,
    legacy: bool = False,
) -> Any:
    """A Flax YOLOX + its variables -> `onnx.ModelProto` with the official interface.

    BatchNorm is folded first (`fold_batchnorm`), every conv is traced as XLA's convolution,
    `dynamic` names the batch axis "batch" (else it is `batch`). Our metadata (`yolox_jax.*`:
    decode_in_inference, legacy, variant, config json) lets `Predictor` read the file back.
    """
    from yolox_jax.export.fold import fold_batchnorm, is_folded
    from yolox_jax.export.onnx import to_onnx

    h, w = (int(v) for v in input_size)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ExportUsageError(f"input size {h}x{w} is not a multiple of 32")
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportUsageError(f"ONNX opset {opset} is not supported: expected "
                               f"{MIN_OPSET}..{MAX_OPSET}")
    if int(batch) < 1:
        raise ExportUsageError(f"batch size must be >= 1, got {batch}")
    folded = variables if is_folded(variables) else fold_batchnorm(variables, model)
    folded = jax.tree.map(np.asarray, folded)
    decode = bool(decode_in_inference)

    # XLA's convolution and pooling primitives everywhere (one Conv / MaxPool node each), not the
    # CPU training formulations (models/kernels.py).
    xla_model = model.clone(kernels="xla")

    def forward(x: jax.Array) -> jax.Array:
        return xla_model.apply(folded, x, train=False, decode=decode)

    meta = {
        "yolox_jax.decode_in_inference": "true" if decode else "false",
        "yolox_jax.legacy": "true" if legacy else "false",
        "yolox_jax.num_classes": str(int(model.num_classes)),
    }
    if config is not None:
        from yolox_jax.config import config_to_json

        cfg = config.copy_and_resolve_references()
        cfg.data.test_size = (h, w)
        meta["yolox_jax.variant"] = str(cfg.name)
        meta["yolox_jax.config"] = config_to_json(cfg)
    return to_onnx(forward, (h, w), batch="batch" if dynamic else int(batch),
                   opset=int(opset), metadata=meta,
                   doc="YOLOX exported by yolox-jax: images [N,3,H,W] BGR 0..255 -> output "
                       "[N,A,5+C]")
