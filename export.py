"""Export a checkpoint to ONNX with the official interface (see `yolox_jax/cli/export.py`).

    python export.py --config configs/yolox_nano.py --checkpoint yolox_nano.pth \
        --output yolox_nano.onnx [--tsize 416] [--dynamic] [--decode-in-inference] [--opset 11]
"""

import sys

from yolox_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
