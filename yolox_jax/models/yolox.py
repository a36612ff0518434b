"""The YOLOX detector (neck with its backbone + decoupled head) and `build_model`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from yolox_jax.config import as_config
from yolox_jax.models.head import YOLOXHead, anchor_grid, decode_boxes
from yolox_jax.models.layers import Settings
from yolox_jax.models.necks import PAFPN, YOLOFPN


class YOLOX(nn.Module):
    """YOLOX over NHWC float images (BGR 0..255, letterboxed top-left with 114 padding).

    `train=False` (inference, BN with running statistics): `[B, N, 5 + C]` with sigmoided obj and
    class scores and, when `decode`, boxes (cx, cy, w, h) in input pixels; with `decode=False`
    the boxes stay raw (xy cell offsets, log wh): the official ONNX export's output.

    `train=True` (what the loss needs): a dict with `outputs` [B, N, 5 + C] (decoded boxes, obj
    and class *logits*), `raw_box` [B, N, 4] (for the L1 loss), `grid` [N, 2] and `strides` [N].
    BN uses batch statistics unless `use_running_average=True` (frozen BN); apply with
    `mutable=["batch_stats"]` to get the updated running statistics.
    Anchors are ordered by stride (8, 16, 32), then row-major. H and W must be multiples of 32.
    """

    num_classes: int = 80
    depth: float = 1.0
    width: float = 1.0
    act: str = "silu"
    depthwise: bool = False
    arch: str = "cspdarknet"
    prior_prob: float = 1e-2
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    dtype: Any = jnp.float32
    kernels: str = "auto"  # see layers.Settings: "auto" | "cpu" | "xla"

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        train: bool = False,
        decode: bool = True,
        use_running_average: bool | None = None,
    ) -> Any:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be NHWC [B, H, W, 3], got shape {images.shape}")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(
                f"image height and width must be multiples of 32, got {images.shape[1:3]}"
            )
        bn_train = train if use_running_average is None else not use_running_average
        s = Settings(self.act, self.bn_eps, self.bn_momentum, self.dtype, self.kernels)
        x = images.astype(self.dtype)
        if self.arch == "darknet53":
            s = s.replace(act="lrelu")  # hard-coded in the official yolov3 exp
            feats = YOLOFPN(s, name="backbone")(x, bn_train)
            head_width = 1.0
        elif self.arch == "cspdarknet":
            feats = PAFPN(self.depth, self.width, self.depthwise, s, name="backbone")(x, bn_train)
            head_width = self.width
        else:
            raise ValueError(f"unknown arch {self.arch!r}; expected 'cspdarknet' or 'darknet53'")
        for i, f in enumerate(feats):
            self.sow("intermediates", f"fpn_{i}", f)
        raw, hw = YOLOXHead(
            self.num_classes, head_width, self.depthwise, self.prior_prob, s, name="head"
        )(feats, bn_train)
        grid, strides = anchor_grid(hw)
        grid, strides = jnp.asarray(grid), jnp.asarray(strides)
        if train:
            boxes = decode_boxes(raw[..., :4], grid, strides)
            return {
                "outputs": jnp.concatenate([boxes, raw[..., 4:]], axis=-1),
                "raw_box": raw[..., :4],
                "grid": grid,
                "strides": strides,
            }
        scores = jax.nn.sigmoid(raw[..., 4:])
        boxes = decode_boxes(raw[..., :4], grid, strides) if decode else raw[..., :4]
        return jnp.concatenate([boxes, scores], axis=-1)


def compute_dtype(name: Any) -> Any:
    """A model dtype name -> the dtype: "auto" is bfloat16 on GPU/TPU (their matrix units run
    it at full rate; its float32 exponent range needs no loss scaling) and float32 on CPU."""
    if isinstance(name, str) and name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return jnp.dtype(name)


def build_model(
    config_or_name: ml_collections.ConfigDict | str = "yolox_s",
    num_classes: int | None = None,
    dtype: Any = None,
) -> YOLOX:
    """A YOLOX module for a config (or a variant name like "yolox_s" / "yolov3", or a
    `configs/*.py` path). `num_classes` overrides the config's."""
    config = as_config(config_or_name)
    m = config.model
    dt = compute_dtype(dtype if dtype is not None else m.get("dtype", "float32"))
    return YOLOX(
        num_classes=int(num_classes if num_classes is not None else m.num_classes),
        depth=float(m.depth),
        width=float(m.width),
        act=str(m.act),
        depthwise=bool(m.depthwise),
        arch=str(m.arch),
        prior_prob=float(m.prior_prob),
        bn_eps=float(m.bn_eps),
        bn_momentum=float(m.bn_momentum),
        dtype=jnp.dtype(dt),
        kernels=str(m.get("kernels", "auto")),
    )


def init_variables(model: YOLOX, rng: jax.Array, input_size: tuple[int, int] = (64, 64)) -> Any:
    """Fresh variables ({'params', 'batch_stats'}) with the official initialisation."""
    x = jnp.zeros((1, *input_size, 3), jnp.float32)
    return jax.jit(lambda r: model.init(r, x, train=False))(rng)
