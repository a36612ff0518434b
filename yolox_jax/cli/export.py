"""`yolox-jax export` (= `export.py`): a checkpoint to ONNX with the official interface.

    yolox-jax export --config configs/yolox_nano.py --checkpoint yolox_nano.pth \\
        --output yolox_nano.onnx [--tsize 416] [--dynamic] [--decode-in-inference] [--opset 11]
        [--batch 1] [--legacy]

The graph input is `images` [N, 3, H, W] float32 (BGR 0..255 letterboxed as `ValTransform`, or
legacy-normalised RGB with --legacy), the output `output` [N, A, 5 + C]: the official raw layout
(xy cell offsets, log wh, sigmoided obj and class scores) or, with --decode-in-inference, boxes
(cx, cy, w, h) in input pixels. NMS stays outside the graph, as in the official export. BatchNorm
is folded into the convs; the network is the traced Flax model (no second implementation).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from yolox_jax.cli import errors
from yolox_jax.cli.common import add_debug_flag, add_tsize_flag, parse_tsize
from yolox_jax.export.exporter import ExportUsageError, export_onnx
from yolox_jax.export.onnx import MAX_OPSET, MIN_OPSET


def make_parser(prog: str = "yolox-jax export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-f", default=None,
                   help="configs/*.py or a variant name; default: from the checkpoint")
    p.add_argument("--checkpoint", "--ckpt", "-c", required=True,
                   help="official .pth, exported folder, or training workdir")
    p.add_argument("--output", "--output-name", "-o", required=True, help="the .onnx to write")
    add_tsize_flag(p, "input size")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch axis ('batch')")
    p.add_argument("--decode-in-inference", "--decode_in_inference", action="store_true",
                   help="decoded boxes (cx, cy, w, h in input pixels) instead of the raw layout")
    p.add_argument("--opset", type=int, default=11,
                   help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET}; default 11, as the official)")
    p.add_argument("--batch", "--batch-size", type=int, default=1,
                   help="static batch size (ignored with --dynamic)")
    p.add_argument("--legacy", action=argparse.BooleanOptionalAction, default=None,
                   help="the model expects legacy-normalised input (default: the config's)")
    add_debug_flag(p)
    return p


def _check_variant(variables: Any, config: Any, checkpoint: str) -> None:
    """The checkpoint's variable shapes must be the config's (an exported folder or workdir
    loaded with another --config is otherwise only found deep inside Flax)."""
    from yolox_jax.weights.convert import num_classes_of, variable_shapes

    want = variable_shapes(config, num_classes_of(variables))["params"]
    got_paths = {jax.tree_util.keystr(k): np.shape(v) for k, v in
                 jax.tree_util.tree_leaves_with_path(variables["params"])}
    want_paths = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                  jax.tree_util.tree_leaves_with_path(want)}
    if got_paths != want_paths:
        diff = sorted(set(got_paths.items()) ^ set(want_paths.items()))
        raise ExportUsageError(
            f"checkpoint {checkpoint!r} does not fit {config.name} (--config): "
            f"{len(diff)} parameter shapes differ, e.g. {diff[0][0]} {diff[0][1]}")


def run(args: argparse.Namespace) -> Path:
    from yolox_jax.export.runtime import is_onnx_path
    from yolox_jax.weights.checkpoint import CheckpointNotFound, load_checkpoint
    from yolox_jax.weights.convert import WeightsError

    tsize = parse_tsize(args.tsize)
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise ExportUsageError(f"--opset {args.opset} is not supported: expected "
                               f"{MIN_OPSET}..{MAX_OPSET}")
    if args.batch < 1:
        raise ExportUsageError(f"--batch must be >= 1, got {args.batch}")
    if is_onnx_path(args.checkpoint):
        raise ExportUsageError(f"--checkpoint {args.checkpoint!r} is an ONNX file already; "
                               "export takes an official .pth, an exported folder or a workdir")
    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        raise ExportUsageError(f"--output {args.output!r} must end in .onnx")
    try:
        model, variables, config = load_checkpoint(args.checkpoint, args.config)
    except (WeightsError, CheckpointNotFound, FileNotFoundError) as e:
        raise ExportUsageError(str(e).splitlines()[0]) from None
    if args.config is not None:
        _check_variant(variables, config, args.checkpoint)
    size = tsize or (int(config.data.test_size[0]), int(config.data.test_size[1]))
    legacy = bool(config.data.get("legacy", False)) if args.legacy is None else args.legacy
    t0 = time.perf_counter()
    proto = export_onnx(model, variables, config, input_size=size, batch=args.batch,
                        dynamic=args.dynamic, decode_in_inference=args.decode_in_inference,
                        opset=args.opset, legacy=legacy)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, out)  # never a half-written .onnx under the final name
    n = len(proto.graph.node)
    shape = ["batch" if args.dynamic else args.batch, 3, *size]
    print(json.dumps({"output": str(out), "variant": str(config.name), "input": shape,
                      "decode_in_inference": bool(args.decode_in_inference),
                      "opset": args.opset, "nodes": n, "legacy": legacy,
                      "seconds": round(time.perf_counter() - t0, 2)}))
    return out


def main(argv: Sequence[str] | None = None, prog: str = "yolox-jax export") -> int:
    """The export command -> exit code (2 with one line on stderr for bad input)."""
    return errors.run(lambda a: run(make_parser(prog).parse_args(a)) and 0, argv, prog)
