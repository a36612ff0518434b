"""The `yolox-jax` command: one entry point, one subcommand per task.

    yolox-jax train   --config configs/yolox_s.py --workdir runs/s --config.data.data_dir=COCO
    yolox-jax eval    -c runs/s --data-dir COCO --ann instances_val2017.json [--plots DIR]
    yolox-jax predict dog.jpg -c yolox_nano.pth [--save-result]
    yolox-jax convert yolox_s.pth --output weights/yolox_s [--reverse]

Each subcommand is a `main(argv) -> int` in `yolox_jax.cli.<module>` (or, for commands another
part of the package provides, that module's `main`), loaded only when it runs, so `--help` is
fast. A user's mistake ends any command with one line on stderr and exit code 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence

# name -> (module with main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("yolox_jax.cli.train", "train or fine-tune (--config FILE --config.KEY=VALUE)"),
    "eval": ("yolox_jax.cli.evaluate", "score a checkpoint on a COCO / VOC / YOLO dataset"),
    "predict": ("yolox_jax.cli.predict", "detect in images, folders, videos or a camera"),
    "export": ("yolox_jax.cli.export", "export a checkpoint to ONNX"),
    "convert": ("yolox_jax.cli.convert", "official .pth <-> yolox-jax checkpoint"),
    "convert-dataset": ("yolox_jax.cli.convert_dataset", "a dataset between VOC, COCO and YOLO"),
    "pack": ("yolox_jax.data.pack", "pack a dataset into ArrayRecord shards"),
    "plot": ("yolox_jax.cli.plot", "results.png from a training workdir's metrics.jsonl"),
    "preview": ("yolox_jax.cli.preview", "a grid of augmented training samples"),
    "assets": ("yolox_jax.cli.assets", "fetch the official weights, demo image, datasets"),
}


def available(module: str) -> bool:
    """Whether `module` exists in this installation (export / pack come from other parts of
    the package that a build may lack)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def usage() -> str:
    from yolox_jax import __version__

    width = max(map(len, COMMANDS))
    lines = ["usage: yolox-jax COMMAND [ARGS...]   (yolox-jax COMMAND --help for its flags)",
             "", f"YOLOX in JAX/Flax, version {__version__}. Commands:"]
    for name, (module, text) in COMMANDS.items():
        missing = "" if available(module) else "  (not available in this build)"
        lines.append(f"  {name:<{width}}  {text}{missing}")
    lines += ["", "Options: --version; --debug (any command): show tracebacks."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from yolox_jax import __version__

        print(f"yolox-jax {__version__}")
        return 0
    if argv[0] == "--debug" and len(argv) > 1:  # `yolox-jax --debug train ...`
        argv = [argv[1], "--debug", *argv[2:]]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"yolox-jax: error: unknown command {name!r}{hint} (one of "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    if not available(module_name):
        print(f"yolox-jax {name}: not available in this build ({module_name} is not "
              "installed)", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    if module_name.startswith("yolox_jax.cli."):
        return int(module.main(rest, prog=f"yolox-jax {name}") or 0)
    from yolox_jax.cli import errors

    return errors.run(module.main, rest, f"yolox-jax {name}")
