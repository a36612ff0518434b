"""Train YOLOX the official way (the same command as `yolox-jax train`).

    python train.py --config configs/yolox_s.py --workdir runs/yolox_s \
        --config.data.data_dir=/data/coco --config.train.batch_size=64

Restarting with the same --workdir resumes exactly where the last checkpoint left off.
Fine-tune from official weights with --config.train.init_from=yolox_s.pth. The code is in
`yolox_jax/cli/train.py`.
"""

import sys

from yolox_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
