"""Errors are messages: a user's mistake ends a command with one line on stderr and exit 2.

The project's own error types (a bad config key or value, a missing or malformed dataset,
annotation, image or checkpoint, an unknown variant, a bad size, a failed asset fetch) name the
file or key and what was expected; `run` prints them as `PROG: error: MESSAGE` without a
traceback. `--debug` anywhere on the command line re-raises them (traceback shown). Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class UsageError(Exception):
    """A bad command-line value or path (the message says which and what is expected)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The project's error types that are the user's input, not a bug."""
    from yolox_jax.assets import AssetError
    from yolox_jax.config import ConfigError
    from yolox_jax.data.io import UnreadableImageError
    from yolox_jax.data.readers import DatasetError
    from yolox_jax.export.exporter import ExportUsageError
    from yolox_jax.export.runtime import OnnxModelError
    from yolox_jax.plots import MetricsError, PlotsUnavailable
    from yolox_jax.weights.convert import WeightsError
    from yolox_jax.weights.torch_io import CheckpointError

    return (UsageError, ConfigError, DatasetError, UnreadableImageError, WeightsError,
            CheckpointError, AssetError, MetricsError, PlotsUnavailable, ExportUsageError,
            OnnxModelError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, PermissionError)


def message(e: BaseException) -> str:
    """The error's text (a KeyError's without the repr quotes)."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e) or type(e).__name__


def strip_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    argv = list(argv)
    return [a for a in argv if a != "--debug"], "--debug" in argv


def run(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None, prog: str) -> int:
    """fn(argv) -> exit code, with the project's errors as one line and exit 2 (see module)."""
    argv, debug = strip_debug(sys.argv[1:] if argv is None else argv)
    try:
        return int(fn(argv) or 0)
    except Exception as e:
        if debug or not isinstance(e, user_error_types()):
            raise
        print(f"{prog}: error: {message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
