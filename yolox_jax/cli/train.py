"""`yolox-jax train`: train YOLOX the official way, or fine-tune.

    yolox-jax train --config configs/yolox_s.py --workdir runs/yolox_s \
        --config.data.data_dir=/data/coco --config.train.batch_size=64
    yolox-jax train --config configs/yolox_nano.py --workdir runs/mine \
        --config.data.format=yolo --config.data.yaml=my_data/data.yaml \
        --config.model.num_classes=3 --config.train.init_from=yolox_nano.pth

Restarting with the same --workdir resumes exactly where the last checkpoint left off. Every
config value is checked before any data is read (see `yolox_jax.config.validate_config`).
Exit codes: 0 done, 2 a bad config / dataset / checkpoint (one line on stderr), 3 a non-finite
loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag, parse_config_args


def make_parser(prog: str = "yolox-jax train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="FILE",
                   help="configs/yolox_*.py; --config.KEY=VALUE overrides any of its values")
    p.add_argument("--workdir", required=True, help="where checkpoints and logs go")
    add_debug_flag(p)
    return p


def _main(argv: list[str], prog: str) -> int:
    config, rest = parse_config_args(argv, required=False)
    parser = make_parser(prog)
    if config is None:  # argparse says that --config is required (and handles --help)
        parser.parse_args(rest)
    args = parser.parse_args([*rest, "--config", "given"])
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read an absl flag

    from yolox_jax.config import validate_config

    validate_config(config)  # before jax starts (multi-host initialisation comes first)
    import jax

    from yolox_jax.train import trainer

    trainer.setup_runtime(config)
    validate_config(config, num_devices=jax.device_count())
    try:
        trainer.train(config, args.workdir)
    except trainer.NonFiniteLossError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 3
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax train") -> int:
    return errors.run(lambda a: _main(a, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
