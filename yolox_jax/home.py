"""The project's one cache folder: `$YOLOX_JAX_HOME`, default `$XDG_CACHE_HOME/yolox_jax` (else
`~/.cache/yolox_jax`).

Under it: the fetched assets (`assets.py`), `jax_cache/` (the persistent compilation
cache), `images/` (the resized-image disk cache) and `shards/` (local copies of remote shard
sets); each of them has its own override (env var or config key) where it is used.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(*parts: str) -> Path:
    """`$YOLOX_JAX_HOME` (default `$XDG_CACHE_HOME/yolox_jax`, else `~/.cache/yolox_jax`) joined
    with `parts`."""
    home = os.environ.get("YOLOX_JAX_HOME")
    if not home:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(base, "yolox_jax")
    return Path(home).joinpath(*parts)
