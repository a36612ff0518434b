"""Convert official YOLOX PyTorch checkpoints to yolox-jax checkpoints, and back (the same
command as `yolox-jax convert`). No torch needed.

    python convert_torch_weights.py yolox_s.pth --output weights/yolox_s [--config CONFIG.py]
    python convert_torch_weights.py weights/yolox_s --output yolox_s_export.pth --reverse

The code is in `yolox_jax/cli/convert.py`.
"""

import sys

from yolox_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(prog="convert_torch_weights.py"))
