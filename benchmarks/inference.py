"""Images/s of the jitted Predictor (letterbox + forward + decode + postprocess) per variant.

    python benchmarks/inference.py --variants nano,tiny,s --batch-sizes 1,32
        [--dtype bfloat16] [--images DIR] [--official /path/to/YOLOX]
        [--backends jax,jax-fold,onnxruntime,openvino] [--rounds 3]

Each variant runs at its test size (nano / tiny 416, the others 640) with random weights on the
present JAX backend. Per batch size one row: the compile time (first call minus a steady call),
end-to-end images/s (BGR uint8 images of 480x640, or the --images files, through
`Predictor.__call__`: host letterbox, transfer, device, unpacking) and device-only images/s
(pre-letterboxed batches, `run_batch` + block).

`--official PATH` (an official YOLOX checkout, with torch==2.13.0 and the official requirements
but torchvision installed by the user) builds the official model of the same variant, loads the
same weights (converted to the official state dict) and runs the official demo path on the same
images in the same process: `ValTransform`, `model(x)`, `postprocess(...)`, boxes / ratio.
torchvision is never imported: its `ops.nms` / `ops.batched_nms` are replaced by an equivalent
written in torch (greedy NMS, IoU > threshold suppresses, as torchvision's CPU kernel; batched via
the coordinate offset trick). The ratio printed is ours / official (end-to-end images/s).

`--threads N` sets the thread count of torch, onnxruntime and OpenVINO (JAX keeps its own).
`--backends`: one row per backend: `jax` (the jitted Predictor), `jax-fold` (the same with
BatchNorm folded into the convs), `onnxruntime` / `openvino` (the model exported by
`yolox_jax.export` with a dynamic batch, run through `Predictor`: same letterbox, jitted
postprocess). For each (variant, batch) every path is warmed up first, then timed in `--rounds`
interleaved rounds (the order rotating), the official path among them, so that load from other
processes hits all of them alike; the median over all timed calls is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolox_jax.inference import CandidateOverflowWarning  # noqa: E402

OFFICIAL_EXP = {"yolox_darknet53": "yolov3"}  # our variant name -> official exps/default file


def load_images(folder: str | None, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` BGR uint8 images: the first files of `folder`, else random 480x640 ones."""
    if folder is None:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(count)]
    from yolox_jax.data.io import read_image

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in exts)
    if not files:
        raise SystemExit(f"--images {folder!r}: no image files found")
    return [read_image(f) for f in (files * count)[:count]]


def random_variables(config: Any, seed: int = 0) -> dict:
    """Random {'params', 'batch_stats'} without the (slow to compile) jitted Flax init.

    Kernels ~ N(0, 1 / fan_in), biases 0, BatchNorm identity (scale 1, var 1): activations stay
    O(1) at every depth; the obj / cls biases get the official prior (`initialize_biases(1e-2)`),
    so, as a fresh official model, almost no box passes conf 0.3. Our fixed-shape postprocess
    costs the same either way; the official one gets cheaper with fewer candidates (use
    --checkpoint and --images for realistic counts).
    """
    import jax

    from yolox_jax.weights.convert import variable_shapes

    rng = np.random.default_rng(seed)

    def fill(path: tuple, sds: Any) -> np.ndarray:
        leaf = getattr(path[-1], "key", str(path[-1]))
        shape = tuple(sds.shape)
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        if leaf in ("scale", "var"):
            return np.ones(shape, np.float32)
        names = [str(getattr(k, "key", k)) for k in path]
        if leaf == "bias" and any(n.startswith(("obj_preds", "cls_preds")) for n in names):
            return np.full(shape, -np.log((1 - 1e-2) / 1e-2), np.float32)
        return np.zeros(shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, variable_shapes(config))


def _steady(fn: Callable[[], Any], min_time: float, min_iters: int = 3) -> list[float]:
    """Per-call seconds of `fn` over at least `min_iters` calls and `min_time` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _batches(images: Sequence[Any], batch: int) -> Callable[[], list[Any]]:
    """A closure returning the next `batch` images, cycling through `images`."""
    state = {"i": 0}

    def next_batch() -> list[Any]:
        i = state["i"]
        state["i"] = (i + batch) % len(images)
        return [images[(i + k) % len(images)] for k in range(batch)]

    return next_batch


def make_predictor(backend: str, model: Any, variables: Any, config: Any, batch: int,
                   args: argparse.Namespace, workdir: Path) -> Any:
    """A Predictor for one backend (ONNX backends export the model to `workdir` first)."""
    from yolox_jax.inference import Predictor

    kw = dict(conf=args.conf, nms=args.nms, batch_buckets=(batch,))
    if backend in ("jax", "jax-fold"):
        return Predictor(model, variables, config=config, dtype=args.dtype,
                         fold_bn=backend == "jax-fold", **kw)
    from yolox_jax.export.exporter import export_onnx
    from yolox_jax.export.runtime import OnnxModel

    path = workdir / f"{config.name}.onnx"
    if not path.exists():
        path.write_bytes(export_onnx(model, variables, config,
                                     input_size=tuple(config.data.test_size),
                                     dynamic=True).SerializeToString())
    return Predictor(OnnxModel(path, backend, num_threads=args.threads), None, **kw)


def predictor_path(p: Any, images: Sequence[np.ndarray], batch: int) -> dict[str, Any]:
    """{'run': one end-to-end call, 'device': one prepared-batch call} for a Predictor."""
    import jax

    next_batch = _batches(images, batch)
    prepared = [p.preprocess(img) for img in images[:batch]]
    inputs = np.stack([x for x, _, _ in prepared])
    ratios = np.array([r for _, r, _ in prepared])
    return {"run": lambda: p(next_batch()),
            "device": lambda: jax.block_until_ready(p.run_batch(inputs, ratios))}


# ----------------------------------------------------------------------------- official side


def _torch_nms_stub() -> types.ModuleType:
    """A `torchvision` module whose `ops.nms` / `ops.batched_nms` are written in torch.

    Semantics of torchvision's CPU kernel: boxes sorted by descending score, a box suppresses the
    later ones with IoU > threshold, areas (x2 - x1) * (y2 - y1); `batched_nms` offsets each
    class's boxes by `class * (max coordinate + 1)` and runs one `nms`.
    """
    import torch

    def nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        order = torch.argsort(scores, descending=True, stable=True)
        b = boxes[order]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        lt = torch.maximum(b[:, None, :2], b[None, :, :2])
        rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        over = (inter / (area[:, None] + area[None, :] - inter) > iou_threshold).numpy()
        suppressed = np.zeros(len(b), bool)
        keep = []
        for i in range(len(b)):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= over[i]
        return order[torch.as_tensor(keep, dtype=torch.int64)]

    def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")
    tv.ops.nms, tv.ops.batched_nms = nms, batched_nms
    tv.__version__ = "stand-in"
    return tv


def require_torch() -> Any:
    """The torch module, or a clear exit saying what to install."""
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "--official needs PyTorch, which is not installed: pip install torch==2.13.0 "
            "(CPU build), plus the official requirements (loguru, tabulate, thop, psutil); "
            "torchvision is not needed"
        ) from None
    return torch


def load_official(path: str, variant: str, variables: Any, config: Any) -> tuple[Any, Any]:
    """(official model in eval mode with our weights, official yolox module namespace)."""
    torch = require_torch()
    root = Path(path).resolve()
    exp_file = root / "exps" / "default" / f"{OFFICIAL_EXP.get(variant, variant)}.py"
    if not (root / "yolox" / "__init__.py").is_file() or not exp_file.is_file():
        raise SystemExit(f"--official {path!r}: not an official YOLOX checkout (no {exp_file})")
    tv = _torch_nms_stub()  # installed before yolox imports it; the real one is never imported
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, tv.ops
    sys.path.insert(0, str(root))
    try:
        from yolox.data.data_augment import ValTransform
        from yolox.exp import get_exp
        from yolox.utils import postprocess
    except ImportError as e:
        raise SystemExit(f"--official: importing the official code failed: {e} "
                         "(install the official requirements, except torchvision)") from None
    from yolox_jax.weights.convert import to_torch_state_dict

    exp = get_exp(str(exp_file))
    model = exp.get_model()
    state = {k: torch.from_numpy(np.array(v)) for k, v in
             to_torch_state_dict(variables, config).items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    ns = types.SimpleNamespace(torch=torch, ValTransform=ValTransform, postprocess=postprocess,
                               test_size=tuple(exp.test_size), num_classes=exp.num_classes)
    return model, ns


def official_path(model: Any, ns: Any, images: Sequence[np.ndarray], batch: int, conf: float,
                  nms: float) -> Callable:
    """One call of the official `tools/demo.py` path on a batch: ValTransform, forward,
    postprocess, boxes / ratio."""
    torch = ns.torch
    preproc = ns.ValTransform(legacy=False)
    h, w = ns.test_size
    next_batch = _batches(images, batch)

    def run() -> list[Any]:
        imgs = next_batch()
        x = torch.from_numpy(np.stack([preproc(img, None, ns.test_size)[0] for img in imgs]))
        with torch.no_grad():
            out = ns.postprocess(model(x.float()), ns.num_classes, conf, nms,
                                 class_agnostic=False)
        for o, img in zip(out, imgs, strict=True):
            if o is not None:
                o[:, :4] /= min(h / img.shape[0], w / img.shape[1])
        return out

    return run


def interleaved(paths: dict[str, Callable[[], Any]], rounds: int, min_time: float
                ) -> dict[str, list[float]]:
    """Per-call seconds of each path, timed in `rounds` rounds of min_time / rounds seconds
    each, the order rotating every round."""
    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].extend(_steady(paths[n], min_time / rounds, min_iters=2))
    return times


# ----------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="nano,s", help="comma list: nano,tiny,s,m,l,x,darknet53")
    p.add_argument("--batch-sizes", default="1,32", help="comma list of batch sizes")
    p.add_argument("--backends", default="jax",
                   help="comma list: jax, jax-fold, onnxruntime, openvino")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--conf", type=float, default=0.3)
    p.add_argument("--nms", type=float, default=0.45)
    p.add_argument("--images", default=None, help="folder of images (default: random 480x640)")
    p.add_argument("--num-images", type=int, default=64, help="distinct images cycled through")
    p.add_argument("--min-time", type=float, default=3.0,
                   help="seconds timed per path and measurement (split over the rounds)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--checkpoint", default=None,
                   help="weights to use instead of random ones (one variant: the checkpoint's)")
    p.add_argument("--official", default=None, help="official YOLOX checkout (needs torch)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads of torch, onnxruntime and OpenVINO (0: their defaults; JAX "
                        "keeps its own)")
    p.add_argument("--no-cache", action="store_true",
                   help="no persistent compilation cache (else a rerun's compile s is the time "
                        "to load the cached program)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", CandidateOverflowWarning)  # random weights: expected

    import os
    import tempfile

    import jax

    from yolox_jax.train.compile import enable_compilation_cache

    if not args.no_cache:
        print(f"compilation cache: {enable_compilation_cache()}")

    from yolox_jax.config import canonical_name, variant_config
    from yolox_jax.models.yolox import build_model

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    known = ("jax", "jax-fold", "onnxruntime", "openvino")
    for b in backends:
        if b not in known:
            raise SystemExit(f"--backends: unknown backend {b!r}; expected {', '.join(known)}")
    variants = [canonical_name(v) for v in args.variants.split(",") if v.strip()]
    loaded = None
    if args.checkpoint:
        from yolox_jax.weights.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.checkpoint)
        variants = [loaded[2].name]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) < 1:
        raise SystemExit(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    if args.official:  # fail before any JAX work when torch is missing
        require_torch()
    images = load_images(args.images, max(args.num_images, max(batch_sizes)))
    devices = jax.devices()
    print(f"backend {jax.default_backend()} ({len(devices)} x {devices[0].device_kind}), "
          f"dtype {args.dtype}, {len(images)} images {images[0].shape[1]}x{images[0].shape[0]}"
          f"{' from ' + args.images if args.images else ' (random)'}, conf {args.conf}, "
          f"nms {args.nms}, {'weights ' + args.checkpoint if loaded else 'random weights'}, "
          f"{args.rounds} interleaved rounds, threads {args.threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    header = (f"{'variant':<16s} {'input':>8s} {'batch':>5s} {'backend':>11s} "
              f"{'compile s':>9s} {'e2e img/s':>9s} {'device img/s':>12s} {'ms/batch':>9s}")
    if args.official:
        header += f" {'official img/s':>14s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="yolox_bench_"))
    for name in variants:
        if loaded is not None:
            model, variables, config = loaded
        else:
            config = variant_config(name)
            model, variables = build_model(config), random_variables(config)
        official = load_official(args.official, name, variables, config) if args.official \
            else None
        if official is not None and args.threads:
            official[1].torch.set_num_threads(args.threads)
        size = "x".join(str(v) for v in config.data.test_size)
        for b in batch_sizes:
            paths, devices_fn, compile_s = {}, {}, {}
            for backend in backends:
                pred = make_predictor(backend, model, variables, config, b, args, workdir)
                fns = predictor_path(pred, images, b)
                t = time.perf_counter()
                fns["run"]()  # compiles
                first = time.perf_counter() - t
                step = statistics.median(_steady(fns["run"], 0.0, min_iters=2))
                compile_s[backend] = max(first - step, 0.0)
                paths[backend], devices_fn[backend] = fns["run"], fns["device"]
            if official is not None:
                paths["official"] = official_path(*official, images, b, args.conf, args.nms)
                paths["official"]()  # warm-up
            times = interleaved(paths, args.rounds, args.min_time)
            off_ips = b / statistics.median(times["official"]) if official is not None else None
            for backend in backends:
                step = statistics.median(times[backend])
                dev = statistics.median(_steady(devices_fn[backend], args.min_time / 3))
                r = {"variant": name, "input": size, "batch": b, "backend": backend,
                     "compile_s": compile_s[backend], "e2e_ips": b / step,
                     "device_ips": b / dev, "ms_per_batch": 1e3 * step}
                line = (f"{name:<16s} {size:>8s} {b:>5d} {backend:>11s} {r['compile_s']:>9.1f} "
                        f"{r['e2e_ips']:>9.1f} {r['device_ips']:>12.1f} "
                        f"{r['ms_per_batch']:>9.1f}")
                if off_ips is not None:
                    r.update(official_ips=off_ips, ratio=r["e2e_ips"] / off_ips,
                             torch_threads=official[1].torch.get_num_threads())
                    line += f" {off_ips:>14.1f} {r['ratio']:>6.2f}"
                print(line, flush=True)
                rows.append(r)
    if args.official and rows:
        print(f"(official: torch {rows[0]['torch_threads']} threads; ratio = ours / official, "
              f"end-to-end; load average now {os.getloadavg()[0]:.2f})")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
