"""Compilation up front: every train-step shape a run will use, and the persistent cache.

Multi-scale training resizes each batch on the device to a size drawn every 10 steps
(`data.multiscale`), and every size is its own XLA program. Compiled lazily, each new size stalls
the run for the length of a compilation somewhere in the middle of an epoch; `precompile`
compiles them all before the first step instead (lowering is serial: tracing holds the GIL;
the XLA compilations run in a thread pool, which releases it), and the jitted step then reuses
these executables (`jax.jit` keeps what `lower(...).compile()` built for the same arguments).

The persistent compilation cache (`enable_compilation_cache`) stores every program that took
at least `min_compile_time_secs` to compile, keyed by the program and the XLA / device
configuration, so a restarted or resumed run (or a benchmark run twice) loads them instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import jax

from yolox_jax.data.multiscale import multiscale_size, size_range
from yolox_jax.home import cache_root


def default_cache_dir() -> Path:
    """$YOLOX_JAX_COMPILATION_CACHE, else `home.cache_root("jax_cache")`."""
    if os.environ.get("YOLOX_JAX_COMPILATION_CACHE"):
        return Path(os.environ["YOLOX_JAX_COMPILATION_CACHE"])
    return cache_root("jax_cache")


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_time_secs: float = 1.0) -> Path:
    """Use the persistent compilation cache in `path` (default `default_cache_dir()`).

    Programs compiling in under `min_compile_time_secs` are not stored (loading would not pay);
    entries of any size are (jax's default minimum entry size, 0). JAX opens the cache at the
    first compilation: a later call with another directory resets it so the new one is used.
    """
    path = Path(path) if path is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if previous and previous != str(path):
        from jax._src import compilation_cache  # no public API to reopen the cache

        compilation_cache.reset_cache()
    return path


def run_sizes(
    first_step: int,
    end_step: int,
    seed: int,
    base_size: Sequence[int],
    multiscale_range: int = 5,
    random_size: Sequence[int] | None = None,
    interval: int = 10,
) -> list[tuple[int, int]]:
    """The distinct `multiscale_size` values of steps [first_step, end_step), in order of first
    use. Stops early once every size of the range has appeared."""
    lo, hi = size_range(base_size, multiscale_range, random_size)
    factor = base_size[1] * 1.0 / base_size[0]
    possible = {(32 * s, 32 * int(s * factor)) for s in range(lo, hi + 1)}
    possible.add((int(base_size[0]), int(base_size[1])))
    sizes: list[tuple[int, int]] = []
    first_period = int(first_step) // int(interval)
    last_period = (int(end_step) - 1) // int(interval)
    for period in range(first_period, last_period + 1):
        size = multiscale_size(period * int(interval), seed, base_size, multiscale_range,
                               random_size, interval)
        if size not in sizes:
            sizes.append(size)
            if len(sizes) == len(possible):
                break
    return sizes


def precompile(
    lower: Callable[[tuple[int, int]], Any],
    sizes: Sequence[tuple[int, int]],
    workers: int = 0,
    log: Callable[[str], None] = print,
    what: str = "train step",
) -> dict[str, Any]:
    """Lower `lower(size)` for every size, then compile them (`workers` threads; 0: one per
    CPU core, at most 8: each compilation holds its own memory). Returns {"seconds": wall,
    "lower_seconds", "per_size": {size: seconds}, "workers"}.

    Each compilation's time is measured from the start of its own compile call; with several
    threads they overlap, so the wall time is the number to compare.
    """
    sizes = list(dict.fromkeys(tuple(int(v) for v in s) for s in sizes))
    if not sizes:
        return {"seconds": 0.0, "per_size": {}, "workers": 0}
    workers = int(workers) or min(os.cpu_count() or 1, 8)
    workers = max(1, min(workers, len(sizes)))
    t0 = time.perf_counter()
    lowered = [(s, lower(s)) for s in sizes]
    lower_s = time.perf_counter() - t0
    log(f"compiling the {what} for {len(sizes)} input size(s) "
        f"({', '.join(f'{h}x{w}' for h, w in sizes)}) with {workers} thread(s); "
        f"lowering took {lower_s:.1f} s")

    def compile_one(item):
        size, low = item
        t = time.perf_counter()
        low.compile()
        return size, time.perf_counter() - t

    per_size: dict[tuple[int, int], float] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="precompile") as pool:
        futures = [pool.submit(compile_one, item) for item in lowered]
        for fut in as_completed(futures):
            size, secs = fut.result()
            per_size[size] = secs
            log(f"  compiled {size[0]}x{size[1]} in {secs:.1f} s "
                f"[{len(per_size)}/{len(sizes)}, {time.perf_counter() - t0:.0f} s elapsed]")
    return {"seconds": time.perf_counter() - t0, "lower_seconds": lower_s,
            "per_size": per_size, "workers": workers}


class CacheHits:
    """Counts persistent-cache hits per program name while active (context manager), read from
    jax's compiler log (a hit is logged at DEBUG as "Persistent compilation cache hit for
    '<name>'"); e.g. `hits.count("jit_step")`."""

    def __init__(self):
        import logging

        self._logger = logging.getLogger("jax._src.compiler")
        self.names: list[str] = []
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                msg = record.getMessage()
                prefix = "Persistent compilation cache hit for '"
                if msg.startswith(prefix):
                    outer.names.append(msg[len(prefix):].split("'", 1)[0])

        self._handler = _Handler(level=logging.DEBUG)
        self._old_level = self._logger.level

    def count(self, name: str) -> int:
        return self.names.count(name)

    def __enter__(self) -> CacheHits:
        import logging

        self._logger.addHandler(self._handler)
        if self._logger.getEffectiveLevel() > logging.DEBUG:
            self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old_level)
