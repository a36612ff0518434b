"""Backbones: CSPDarknet (YOLOX-nano..x) and Darknet-53 (YOLOX-Darknet53), NHWC.

Both return the `dark3, dark4, dark5` features (strides 8, 16, 32) the necks consume.
"""

from __future__ import annotations

import jax
from flax import linen as nn

from yolox_jax.models.layers import (
    BaseConv,
    CSPLayer,
    Focus,
    ResLayer,
    Settings,
    SPPBottleneck,
    conv_block,
)


class CSPDarknet(nn.Module):
    depth: float = 1.0
    width: float = 1.0
    depthwise: bool = False
    s: Settings = Settings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """[B, H, W, 3] -> (dark3 [B, H/8, W/8, 4c], dark4 [.., 8c], dark5 [.., 16c]), c = 64 w."""
        kw = dict(s=self.s)
        c = int(self.width * 64)
        n = max(round(self.depth * 3), 1)  # Python round, as the official code
        Conv = conv_block(self.depthwise)
        dw = self.depthwise
        x = Focus(c, ksize=3, name="stem", **kw)(x, train)
        x = Conv(c * 2, 3, 2, name="dark2.0", **kw)(x, train)
        x = CSPLayer(c * 2, n=n, depthwise=dw, name="dark2.1", **kw)(x, train)
        x = Conv(c * 4, 3, 2, name="dark3.0", **kw)(x, train)
        dark3 = CSPLayer(c * 4, n=n * 3, depthwise=dw, name="dark3.1", **kw)(x, train)
        x = Conv(c * 8, 3, 2, name="dark4.0", **kw)(dark3, train)
        dark4 = CSPLayer(c * 8, n=n * 3, depthwise=dw, name="dark4.1", **kw)(x, train)
        x = Conv(c * 16, 3, 2, name="dark5.0", **kw)(dark4, train)
        x = SPPBottleneck(c * 16, name="dark5.1", **kw)(x, train)
        dark5 = CSPLayer(c * 16, n=n, shortcut=False, depthwise=dw, name="dark5.2", **kw)(
            x, train
        )
        return dark3, dark4, dark5


class Darknet53(nn.Module):
    """Darknet-53 with the official SPP block at the end of dark5 (LeakyReLU 0.1 everywhere)."""

    s: Settings = Settings(act="lrelu")
    blocks: tuple[int, int, int, int] = (2, 8, 8, 4)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """[B, H, W, 3] -> (dark3 [.., 256], dark4 [.., 512], dark5 [.., 512])."""
        kw = dict(s=self.s)

        def group(x, prefix, features, num_blocks, start=0):
            """The official `make_group_layer`: a stride-2 conv then `num_blocks` ResLayers."""
            x = BaseConv(features, 3, 2, name=f"{prefix}.{start}", **kw)(x, train)
            for i in range(num_blocks):
                x = ResLayer(name=f"{prefix}.{start + 1 + i}", **kw)(x, train)
            return x

        x = BaseConv(32, 3, 1, name="stem.0", **kw)(x, train)
        x = group(x, "stem", 64, 1, start=1)
        x = group(x, "dark2", 128, self.blocks[0])
        dark3 = group(x, "dark3", 256, self.blocks[1])
        dark4 = group(dark3, "dark4", 512, self.blocks[2])
        x = group(dark4, "dark5", 1024, self.blocks[3])
        # The official `make_spp_block`, unpacked into dark5 after its residual blocks.
        s = self.blocks[3] + 1
        x = BaseConv(512, 1, 1, name=f"dark5.{s}", **kw)(x, train)
        x = BaseConv(1024, 3, 1, name=f"dark5.{s + 1}", **kw)(x, train)
        x = SPPBottleneck(512, name=f"dark5.{s + 2}", **kw)(x, train)
        x = BaseConv(1024, 3, 1, name=f"dark5.{s + 3}", **kw)(x, train)
        dark5 = BaseConv(512, 1, 1, name=f"dark5.{s + 4}", **kw)(x, train)
        return dark3, dark4, dark5
