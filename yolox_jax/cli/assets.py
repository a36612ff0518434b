"""`yolox-jax assets fetch NAME... | list` (= `python -m yolox_jax.assets`): third-party weights,
images and datasets, from their public sources or a local mirror, sha256-verified, cached."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from yolox_jax.cli import errors


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax assets") -> int:
    from yolox_jax import assets

    return errors.run(lambda a: assets.main(a, prog=prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
