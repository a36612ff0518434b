"""The decoupled, anchor-free YOLOX head and the anchor grid it decodes with."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from yolox_jax.models.layers import BaseConv, Conv, Settings, conv_block, torch_bias_init

STRIDES = (8, 16, 32)


def anchor_grid(
    hw: Sequence[tuple[int, int]], strides: Sequence[int] = STRIDES
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor cells in the official order (levels by stride, then row-major).

    Returns `grid` [N, 2] float32 (x, y cell indices, the official x/y_shifts) and `strides`
    [N] float32, N = sum(h * w). Static numpy: shapes are known at trace time.
    """
    grids, levels = [], []
    for (h, w), s in zip(hw, strides, strict=True):
        yv, xv = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        levels.append(np.full(h * w, s))
    return (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(levels).astype(np.float32),
    )


def decode_boxes(raw_box: jax.Array, grid: jax.Array, strides: jax.Array) -> jax.Array:
    """Raw [..., N, 4] (xy cell offsets, log wh) -> (cx, cy, w, h) in input pixels."""
    s = strides[:, None]
    return jnp.concatenate(
        [(raw_box[..., :2] + grid) * s, jnp.exp(raw_box[..., 2:4]) * s], axis=-1
    )


class YOLOXHead(nn.Module):
    num_classes: int = 80
    width: float = 1.0
    depthwise: bool = False
    prior_prob: float = 1e-2
    s: Settings = Settings()

    @nn.compact
    def __call__(
        self, feats: Sequence[jax.Array], train: bool = False
    ) -> tuple[jax.Array, list[tuple[int, int]]]:
        """FPN features -> raw predictions [B, N, 5 + C] (reg 4, obj 1, cls C; logits), float32,
        and the (h, w) of each level."""
        kw = dict(s=self.s)
        hidden = int(256 * self.width)
        Block = conv_block(self.depthwise)
        prior_bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        outs, hw = [], []
        for k, x in enumerate(feats):
            x = BaseConv(hidden, 1, 1, name=f"stems.{k}", **kw)(x, train)
            cls_feat = Block(hidden, 3, 1, name=f"cls_convs.{k}.0", **kw)(x, train)
            cls_feat = Block(hidden, 3, 1, name=f"cls_convs.{k}.1", **kw)(cls_feat, train)
            reg_feat = Block(hidden, 3, 1, name=f"reg_convs.{k}.0", **kw)(x, train)
            reg_feat = Block(hidden, 3, 1, name=f"reg_convs.{k}.1", **kw)(reg_feat, train)

            def pred(features, name, bias_init, feat):
                return Conv(features, 1, use_bias=True, bias_init=bias_init, s=self.s,
                            name=name)(feat)

            prior = nn.initializers.constant(prior_bias)
            cls_out = pred(self.num_classes, f"cls_preds.{k}", prior, cls_feat)
            reg_out = pred(4, f"reg_preds.{k}", torch_bias_init(hidden), reg_feat)
            obj_out = pred(1, f"obj_preds.{k}", prior, reg_feat)
            out = jnp.concatenate([reg_out, obj_out, cls_out], axis=-1).astype(jnp.float32)
            b, h, w, c = out.shape
            outs.append(out.reshape(b, h * w, c))
            hw.append((h, w))
        return jnp.concatenate(outs, axis=1), hw
