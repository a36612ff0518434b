"""What several commands share: `--config FILE --config.key=value` parsing, `--tsize`, `--debug`.

Config overrides are parsed by ml_collections' `config_flags` (as `train.py` always did: typed
values, tuples as `(320,320)`, `path:arg` config files, a locked config), on a private absl
`FlagValues`, so that every command can mix them with its argparse flags. Before that, every
override key is checked against the loaded config: a misspelled key is a ConfigError naming
the closest valid one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ml_collections

from yolox_jax.cli.errors import UsageError
from yolox_jax.config import ConfigError, flat_keys, unknown_key_message


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """`--debug` is taken off argv by `errors.run`; listed here so that --help shows it."""
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")


def _config_path(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    rest, path, i = [], None, 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a value (configs/yolox_*.py)")
            path, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def _load(path: str, tokens: Sequence[str]) -> ml_collections.ConfigDict:
    """The config file (our loader: `importlib` `exec_module`, not config_flags' file loader and
    its deprecated `load_module()`), then the overrides applied by config_flags, locked."""
    from absl import flags
    from ml_collections import config_flags

    from yolox_jax.config import load_config_file

    try:
        config = load_config_file(path)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"cannot load config file {path!r}: it does not exist") from None
    except Exception as e:  # noqa: BLE001 - whatever the file raises, named in one line
        raise ConfigError(f"cannot load config file {path!r}: {type(e).__name__}: {e}") from None
    fv = flags.FlagValues()
    argv = ["yolox-jax", *tokens]
    holder = config_flags.DEFINE_config_dict("config", config, flag_values=fv,
                                             lock_config=True, sys_argv=argv)
    try:
        fv(argv)
        return holder.value
    except flags.IllegalFlagValueError as e:
        raise ConfigError(str(e).replace("flag --", "--", 1)) from None
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"config overrides {' '.join(tokens)}: {text}") from None


def parse_config_args(
    argv: Sequence[str], required: bool = True
) -> tuple[ml_collections.ConfigDict | None, list[str]]:
    """argv -> (the config with its --config.key=value overrides applied, the other args).

    `--config.key value` (value as the next arg) works for every type but bool, as in absl.
    """
    path, rest = _config_path(argv)
    if path is None:
        stray = [a for a in rest if a.startswith("--config.")]
        if required or stray:
            raise UsageError("--config is required (configs/yolox_*.py)"
                             + (f" for the overrides {' '.join(stray)}" if stray else ""))
        return None, rest
    base = _load(path, [])
    known = set(flat_keys(base))
    types = {k: type(_get(base, k)) for k in known}
    tokens, others, i = [], [], 0
    while i < len(rest):
        a = rest[i]
        if not a.startswith("--config."):
            others.append(a)
            i += 1
            continue
        key, eq, _ = a[len("--config."):].partition("=")
        if key not in known:
            raise ConfigError(unknown_key_message(key, known))
        tokens.append(a)
        if not eq and types[key] is not bool:
            if i + 1 >= len(rest):
                raise UsageError(f"{a} needs a value")
            tokens.append(rest[i + 1])
            i += 1
        i += 1
    config = _load(path, tokens) if tokens else base
    return config, others


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def add_tsize_flag(parser: argparse.ArgumentParser, what: str = "test size") -> None:
    """`--tsize S` or `--tsize H W`; read it with `parse_tsize`."""
    parser.add_argument("--tsize", type=int, nargs="+", default=None,
                        help=f"{what}: S (square) or H W, multiples of 32; default: the "
                             "config's test_size")


def parse_tsize(tsize: Sequence[int] | None,
                default: Sequence[int] | None = None) -> tuple[int, int] | None:
    """--tsize S or H W (positive multiples of 32) -> (H, W); None -> `default` (None: the
    config's test size, which the Predictor / exporter take when given None)."""
    if tsize is None:
        return None if default is None else (int(default[0]), int(default[1]))
    if len(tsize) not in (1, 2):
        raise UsageError(f"--tsize takes S or H W, got {list(tsize)}")
    size = (int(tsize[0]), int(tsize[-1]))
    for v in size:
        if v <= 0 or v % 32:
            raise UsageError(f"--tsize {v} is not {'positive' if v <= 0 else 'a multiple of 32'}"
                             " (--tsize must be positive multiples of 32, the network's stride)")
    return size
