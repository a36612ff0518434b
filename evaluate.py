"""Evaluate a checkpoint on a COCO, VOC or YOLO dataset (the same command as `yolox-jax eval`).

    python evaluate.py -c yolox_nano.pth --data-dir COCO --ann annotations/instances_val2017.json
    python evaluate.py -c my_export/ --data-dir VOCdevkit/VOC2007 --voc-split test

The code and the full description are in `yolox_jax/cli/evaluate.py` (`--help`).
"""

import sys

from yolox_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main(prog="evaluate.py"))
