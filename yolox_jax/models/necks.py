"""Necks: PAFPN (YOLOX-nano..x) and YOLOFPN (YOLOX-Darknet53). Each owns its backbone as
`backbone` (as the official modules do, hence the `backbone.backbone.*` state-dict keys) and sows
the backbone features into the `intermediates` collection for inspection and parity tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from yolox_jax.models.backbones import CSPDarknet, Darknet53
from yolox_jax.models.layers import BaseConv, CSPLayer, Settings, conv_block, upsample2x


class PAFPN(nn.Module):
    depth: float = 1.0
    width: float = 1.0
    depthwise: bool = False
    s: Settings = Settings()
    in_channels: tuple[int, int, int] = (256, 512, 1024)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """[B, H, W, 3] -> (P3 [B, H/8, W/8, 256w], P4 [.., 512w], P5 [.., 1024w])."""
        kw = dict(s=self.s)
        x2, x1, x0 = CSPDarknet(self.depth, self.width, self.depthwise, name="backbone", **kw)(
            x, train
        )
        for name, f in zip(("dark3", "dark4", "dark5"), (x2, x1, x0), strict=True):
            self.sow("intermediates", name, f)
        c0, c1, c2 = (int(c * self.width) for c in self.in_channels)
        n = round(3 * self.depth)
        dw = self.depthwise
        Conv = conv_block(dw)

        fpn_out0 = BaseConv(c1, 1, 1, name="lateral_conv0", **kw)(x0, train)
        f_out0 = jnp.concatenate([upsample2x(fpn_out0), x1], axis=-1)
        f_out0 = CSPLayer(c1, n, False, depthwise=dw, name="C3_p4", **kw)(f_out0, train)

        fpn_out1 = BaseConv(c0, 1, 1, name="reduce_conv1", **kw)(f_out0, train)
        f_out1 = jnp.concatenate([upsample2x(fpn_out1), x2], axis=-1)
        pan_out2 = CSPLayer(c0, n, False, depthwise=dw, name="C3_p3", **kw)(f_out1, train)

        p_out1 = Conv(c0, 3, 2, name="bu_conv2", **kw)(pan_out2, train)
        p_out1 = jnp.concatenate([p_out1, fpn_out1], axis=-1)
        pan_out1 = CSPLayer(c1, n, False, depthwise=dw, name="C3_n3", **kw)(p_out1, train)

        p_out0 = Conv(c1, 3, 2, name="bu_conv1", **kw)(pan_out1, train)
        p_out0 = jnp.concatenate([p_out0, fpn_out0], axis=-1)
        pan_out0 = CSPLayer(c2, n, False, depthwise=dw, name="C3_n4", **kw)(p_out0, train)
        return pan_out2, pan_out1, pan_out0


class YOLOFPN(nn.Module):
    """The YOLOv3 FPN over Darknet-53: two upsampling branches; dark5 passes through."""

    s: Settings = Settings(act="lrelu")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """[B, H, W, 3] -> (out_dark3 [.., 128], out_dark4 [.., 256], dark5 [.., 512])."""
        kw = dict(s=self.s)
        x2, x1, x0 = Darknet53(self.s, name="backbone")(x, train)
        for name, f in zip(("dark3", "dark4", "dark5"), (x2, x1, x0), strict=True):
            self.sow("intermediates", name, f)

        def embedding(x, prefix, filters):
            """The official `_make_embedding`: five alternating 1x1 / 3x3 convs."""
            for i, (features, k) in enumerate(
                [(filters[0], 1), (filters[1], 3), (filters[0], 1), (filters[1], 3),
                 (filters[0], 1)]
            ):
                x = BaseConv(features, k, 1, name=f"{prefix}.{i}", **kw)(x, train)
            return x

        x1_in = BaseConv(256, 1, 1, name="out1_cbl", **kw)(x0, train)
        x1_in = jnp.concatenate([upsample2x(x1_in), x1], axis=-1)
        out_dark4 = embedding(x1_in, "out1", (256, 512))
        x2_in = BaseConv(128, 1, 1, name="out2_cbl", **kw)(out_dark4, train)
        x2_in = jnp.concatenate([upsample2x(x2_in), x2], axis=-1)
        out_dark3 = embedding(x2_in, "out2", (128, 256))
        return out_dark3, out_dark4, x0
