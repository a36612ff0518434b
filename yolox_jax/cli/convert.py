"""`yolox-jax convert` (= `convert_torch_weights.py`): official YOLOX PyTorch checkpoints to
yolox-jax checkpoints, and back. No torch needed.

    yolox-jax convert yolox_s.pth --output weights/yolox_s [--config CONFIG.py]
    yolox-jax convert weights/yolox_s --output yolox_s_export.pth --reverse

The `.pth` is read by a restricted unpickler that rebuilds tensors and nothing else, so a
malicious file cannot run code. The variant and the number of classes are inferred from the
weights unless `--config` is given (then a mismatch is reported as such).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag


def make_parser(prog: str = "yolox-jax convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("checkpoint", help="official .pth (or, with --reverse, our checkpoint)")
    parser.add_argument("--output", required=True, help="output folder (or .pth with --reverse)")
    parser.add_argument("--config", default=None, help="configs/yolox_*.py (default: inferred)")
    parser.add_argument("--reverse", action="store_true",
                        help="write our checkpoint as an official-format .pth")
    add_debug_flag(parser)
    return parser


def _main(argv: list[str], prog: str) -> int:
    args = make_parser(prog).parse_args(argv)
    from yolox_jax.weights.checkpoint import load_checkpoint, load_torch_checkpoint, save_checkpoint
    from yolox_jax.weights.convert import to_torch_state_dict
    from yolox_jax.weights.torch_io import save_torch_file

    if args.reverse:
        _, variables, config = load_checkpoint(args.checkpoint, args.config)
        state_dict = to_torch_state_dict(variables, config)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_torch_file({"model": state_dict}, out)
        print(f"wrote {out} ({config.name}, {config.model.num_classes} classes, "
              f"{len(state_dict)} tensors) in the official checkpoint layout")
    else:
        variables, config = load_torch_checkpoint(args.checkpoint, args.config)
        out = save_checkpoint(args.output, variables, config)
        print(f"wrote {out} ({config.name}, {config.model.num_classes} classes)")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax convert") -> int:
    return errors.run(lambda a: _main(a, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
