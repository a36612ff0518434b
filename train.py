"""Train YOLOX the official way.

    python train.py --config configs/yolox_s.py --workdir runs/yolox_s \
        --config.data.data_dir=/data/coco --config.train.batch_size=64

Restarting with the same --workdir resumes exactly where the last checkpoint left off.
Fine-tune from official weights with --config.train.init_from=yolox_s.pth.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/yolox_*.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and logs go")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from yolox_jax.train.trainer import NonFiniteLossError, train

    try:
        train(_CONFIG.value, _WORKDIR.value)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    app.run(main)
