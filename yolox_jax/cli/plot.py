"""`yolox-jax plot WORKDIR [--out results.png]`: the training curves of a workdir.

Reads `WORKDIR/metrics.jsonl` (or a metrics.jsonl given directly) and writes `results.png`
(default: beside it) with the per-epoch loss terms, the learning rate and the evaluation numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag


def _main(argv: list[str], prog: str) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="training workdir (or its metrics.jsonl)")
    p.add_argument("--out", default=None, help="output png (default: WORKDIR/results.png)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    from yolox_jax.plots import plot_results

    print(f"wrote {plot_results(args.workdir, args.out)}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax plot") -> int:
    return errors.run(lambda a: _main(a, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
