"""The GPU suite (run it through benchmarks/gpu_suite.sh): one report for a lent accelerator.

Sections, each a fixed-format table (tests/test_benchmarks.py checks the format at --tiny):

1. forward parity: float32 forward of the fixture models (gen weights + calibrated BN) on both
   fixture inputs against the official outputs (decoded and raw box outputs, every value),
   max |ours - official| / max |official|; bar 1e-4 at `precision=highest` (true float32). The
   same at the backend's default precision is printed for information: on NVIDIA GPUs XLA runs
   float32 convolutions and matmuls in TF32 by default (~1e-3).
2. train step: our full step (forward, SimOTA, losses, backward, SGD, EMA; `train.step`) per
   variant and dtype, and the official PyTorch step with AMP (autocast float16 + GradScaler, as
   the official trainer with --fp16) on the same batch: `batch_per_device` x devices images of
   `size`, `boxes` boxes each. Columns: compile s (ours: lower + compile, all configurations
   compiled in parallel threads first), s/step (median), img/s, model TFLOP/step (3 x the
   forward's FLOPs from XLA's cost analysis of the unoptimised forward: forward + backward, the
   usual MFU convention; the official row uses ours for the same variant), MFU % (model FLOP/s
   over the peak below), XLA GiB (the compiled step's arguments + outputs + temporaries -
   aliased, `compiled.memory_analysis()`), peak GiB (the runtime's peak bytes in use so far in
   this process, `device.memory_stats()`; torch: `max_memory_allocated` per run).
3. inference: images/s of the Predictor's device program (forward + decode + NMS on
   letterboxed batches, `Predictor.run_batch`) at each batch size.

MFU peaks (dense, per device, from the datasheets; float32 at the TF32 rate since that is what
XLA uses for float32 convolutions on these GPUs): H100 / H200 SXM 989.4 TFLOP/s bf16/fp16,
494.7 TF32; A100 312 / 156. Unknown devices (the CPU) print "-" unless --peak-tflops is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # fixture_weights (the fixtures' gen-weight rule)

PEAK_TFLOPS = {  # device_kind substring -> dense TFLOP/s by dtype
    "H100": {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7},
    "H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0},
}
PARITY_BAR = 1e-4
GIB = 2.0**30
TRAIN_COLUMNS = ("impl", "variant", "dtype", "compile s", "s/step", "img/s", "TFLOP/step",
                 "MFU %", "XLA GiB", "peak GiB")
INFER_COLUMNS = ("variant", "dtype", "batch", "compile s", "ms/batch", "img/s")
PARITY_COLUMNS = ("variant", "input", "precision", "max rel err", "bar", "result")


def _row(cells: list[Any], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def table(title: str, columns: tuple[str, ...], rows: list[list[Any]]) -> str:
    """`-- title --`, a header line and the rows, columns padded to their widest cell."""
    cells = [list(columns)] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join([f"-- {title} --"] + [_row(r, widths) for r in cells])


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


def peak_tflops(device_kind: str, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_kind:
            return peaks.get(dtype)
    return None


# ------------------------------------------------------------------------------ parity
def parity(variants: list[str], precisions: list[str], inputs_keys: tuple[str, ...]
           ) -> list[list[Any]]:
    import jax
    import jax.numpy as jnp
    from fixture_weights import FIXTURES, fixture_name, fixture_state_dict

    from yolox_jax.config import variant_config
    from yolox_jax.models.yolox import build_model
    from yolox_jax.weights.convert import from_torch_state_dict

    inputs = np.load(FIXTURES / "forward" / "inputs.npz")
    rows = []
    for variant in variants:
        model = build_model(variant)
        variables = jax.device_put(
            from_torch_state_dict(fixture_state_dict(variant), variant_config(variant)))
        ref = np.load(FIXTURES / "forward" / f"{fixture_name(variant)}.npz")
        for precision in precisions:
            run = _forward_fn(model, variables, precision)
            for key in inputs_keys:
                suffix = key[len("images"):]
                x = jnp.asarray(inputs[key].transpose(0, 2, 3, 1))
                decoded, raw = jax.device_get(run(x))
                err = max(_rel_err(decoded, ref["decoded" + suffix]),
                          _rel_err(raw, ref["raw_box" + suffix]))
                bar = PARITY_BAR if precision == "highest" else None
                result = ("PASS" if err < PARITY_BAR else "FAIL") if bar else "info"
                rows.append([variant, "x".join(str(s) for s in inputs[key].shape[:1]
                                               + inputs[key].shape[2:]),
                             precision, f"{err:.1e}", _fmt(bar, ".0e"), result])
    return rows


def _forward_fn(model: Any, variables: Any, precision: str):
    """jit: x -> (decoded outputs, raw box outputs) at `precision` for every matmul / conv."""
    import jax

    @jax.jit
    def run(x):
        with jax.default_matmul_precision(precision):
            return model.apply(variables, x), model.apply(variables, x, decode=False)[..., :4]

    return run


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# ------------------------------------------------------------------------------ train step
def model_flops(model: Any, variables: Any, batch: int, size: int) -> float:
    """3 x the forward FLOPs (XLA cost analysis of the lowered, unoptimised train forward)."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    cost = fwd.lower(variables, x).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return 3.0 * float((cost or {}).get("flops", float("nan")))


def ours_train(variants: list[str], dtypes: list[str], batch: int, size: int, boxes: int,
               steps: int, workers: int, log) -> list[dict[str, Any]]:
    """Set up every (variant, dtype), compile them all in parallel threads, then time each."""
    import jax
    from train_step import _memory, _peak_bytes, synthetic_batch

    from yolox_jax.config import variant_config
    from yolox_jax.models.yolox import build_model, init_variables
    from yolox_jax.train.optim import make_optimizer
    from yolox_jax.train.state import create_train_state
    from yolox_jax.train.step import global_batch, make_mesh, make_train_step, replicated

    images, labels = synthetic_batch(batch, size, boxes, 120)
    mesh = make_mesh()
    x, y = global_batch(mesh, images, labels)
    runs = []
    for variant in variants:
        for dtype in dtypes:
            config = variant_config(variant)
            config.model.dtype = dtype
            model = build_model(config)
            variables = init_variables(model, jax.random.key(0), (size, size))
            tx, schedule = make_optimizer(config.train, batch, 1000)
            state = jax.device_put(create_train_state(variables, tx, 0), replicated(mesh))
            step = make_train_step(model, tx, schedule, mesh)
            runs.append(dict(variant=variant, dtype=dtype, state=state, step=step,
                             flops=model_flops(model, variables, batch, size),
                             lowered=step.lower(state, x, y, None)))

    def compile_one(run):
        t = time.perf_counter()
        run["compiled"] = run.pop("lowered").compile()
        run["compile_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(runs)))) as pool:
        list(pool.map(compile_one, runs))
    log(f"compiled {len(runs)} train steps in {time.perf_counter() - t:.1f} s (parallel)")
    for run in runs:
        state, step = run.pop("state"), run["step"]
        state, m = step(state, x, y, use_l1=False, size=None)  # reuses the compiled program
        jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, m = step(state, x, y, use_l1=False, size=None)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        mem = _memory(run["compiled"])
        run.update(step_s=statistics.median(times), loss=float(m["total"]),
                   xla_bytes=(mem.get("argument_size_in_bytes", 0)
                              + mem.get("output_size_in_bytes", 0)
                              + mem.get("temp_size_in_bytes", 0)
                              - mem.get("alias_size_in_bytes", 0)) if mem else None,
                   peak_bytes=_peak_bytes())
        del state, run["compiled"]
        log(f"ours {run['variant']} {run['dtype']}: {run['step_s']:.4f} s/step, "
            f"loss {run['loss']:.3f}")
    return runs


def official_amp(path: str | None, variants: list[str], batch: int, size: int, boxes: int,
                 steps: int) -> tuple[list[dict[str, Any]], str]:
    """The official train step with AMP on CUDA, or ([], why not)."""
    if not path or not (Path(path) / "yolox" / "__init__.py").is_file():
        return [], f"no official YOLOX checkout at {path!r} (see gpu_suite.sh)"
    try:
        import torch
    except ImportError:
        return [], "torch is not installed"
    if not torch.cuda.is_available():
        return [], "no CUDA device for torch (the official AMP step needs one)"
    from train_step import _stub_torchvision, synthetic_batch

    sys.path.insert(0, str(Path(path).resolve()))
    _stub_torchvision()
    from yolox.exp import get_exp

    images, labels = synthetic_batch(batch, size, boxes, 120)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)).cuda()
    y = torch.from_numpy(labels).cuda()
    out = []
    for variant in variants:
        exp = get_exp(None, variant.replace("_", "-"))
        model = exp.get_model().cuda().train()
        opt = exp.get_optimizer(batch)
        torch.cuda.reset_peak_memory_stats()
        one = _amp_step(torch, model, opt, x, y)
        t = time.perf_counter()
        one()
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            loss = one()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out.append(dict(variant=variant, dtype="fp16 AMP", first_s=first,
                        step_s=statistics.median(times), loss=float(loss),
                        peak_bytes=int(torch.cuda.max_memory_allocated())))
        del model, opt
        torch.cuda.empty_cache()
    return out, ""


def _amp_step(torch: Any, model: Any, opt: Any, x: Any, y: Any):
    """One official training step with AMP, as `yolox/core/trainer.py` with --fp16: forward
    under autocast(float16), GradScaler-scaled backward, optimizer step."""
    scaler = torch.cuda.amp.GradScaler(enabled=True)

    def one():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x, y)["total_loss"]
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return one


# ------------------------------------------------------------------------------ inference
def inference(variants: list[str], dtype: str, batches: list[int], size: int, workers: int,
              min_time: float) -> list[list[Any]]:
    import jax
    from inference import _steady, random_variables

    from yolox_jax.config import variant_config
    from yolox_jax.inference import Predictor
    from yolox_jax.models.yolox import build_model

    preds = []
    for variant in variants:
        config = variant_config(variant)
        config.data.test_size = (size, size)
        model = build_model(config)
        variables = random_variables(config)
        for b in batches:
            p = Predictor(model, variables, config=config, input_size=(size, size),
                          dtype=dtype, batch_buckets=(b,))
            rng = np.random.default_rng(0)
            inputs = rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8)
            preds.append((variant, b, p, inputs, np.ones(b)))

    def warm(item):  # the first call compiles
        _, _, p, inputs, ratios = item
        t = time.perf_counter()
        jax.block_until_ready(p.run_batch(inputs, ratios))
        return time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(preds)))) as pool:
        compile_s = list(pool.map(warm, preds))
    rows = []
    for (variant, b, p, inputs, ratios), c in zip(preds, compile_s, strict=True):
        times = _steady(lambda p=p, i=inputs, r=ratios: jax.block_until_ready(p.run_batch(i, r)),
                        min_time)
        ms = 1e3 * statistics.median(times)
        rows.append([variant, dtype, b, f"{c:.1f}", f"{ms:.2f}", f"{1e3 * b / ms:.1f}"])
        p.close()
    return rows


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="CPU-sized: yolox_tiny (no depthwise convs: compiles fastest on a CPU), "
                        "64x64, 2 images/device, 4 boxes, 2 steps, one parity input")
    p.add_argument("--variants", default=None, help="train / inference variants (s,l)")
    p.add_argument("--parity-variants", default=None, help="forward parity variants (nano,s,l)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--batch-per-device", type=int, default=None)
    p.add_argument("--boxes", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--infer-batches", default=None, help="inference batch sizes (1,32)")
    p.add_argument("--official", default=None, help="official YOLOX checkout")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s per device for MFU (default: the table by device kind)")
    p.add_argument("--workers", type=int, default=8, help="parallel compilations")
    p.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    a = p.parse_args(argv)
    tiny = a.tiny
    variants = (a.variants or ("tiny" if tiny else "s,l")).split(",")
    variants = [v if v.startswith("yolox_") else f"yolox_{v}" for v in variants]
    parity_variants = (a.parity_variants or ("tiny" if tiny else "nano,s,l")).split(",")
    parity_variants = [v if v.startswith("yolox_") else f"yolox_{v}" for v in parity_variants]
    dtypes = a.dtypes.split(",")
    size = a.size or (64 if tiny else 640)
    per_device = a.batch_per_device or (2 if tiny else 16)
    boxes = a.boxes or (4 if tiny else 120)
    steps = a.steps or (2 if tiny else 10)
    infer_batches = [int(b) for b in (a.infer_batches or ("1,2" if tiny else "1,32")).split(",")]
    min_time = 0.0 if tiny else 2.0

    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    import jax

    from yolox_jax.train.compile import enable_compilation_cache

    if not a.no_cache:
        enable_compilation_cache()
    dev = jax.devices()[0]
    n_dev = jax.device_count()
    batch = per_device * n_dev
    try:
        import torch

        torch_info = f"torch {torch.__version__} (cuda {torch.cuda.is_available()})"
    except ImportError:
        torch_info = "no torch"
    header = (f"== yolox-jax GPU suite: {dev.device_kind} x{n_dev} ({jax.default_backend()}, "
              f"jax {jax.__version__}; {torch_info}) ==")
    print(header, flush=True)

    # 1. The official step first, before JAX holds any device memory.
    official, why_not = official_amp(a.official, variants, batch, size, boxes, steps)
    log("official AMP: " + (f"{len(official)} variants" if official else f"skipped, {why_not}"))
    sections = []
    parity_rows = parity(parity_variants, ["highest"] if tiny else ["highest", "default"],
                         ("images",) if tiny else ("images", "images_96"))
    log("parity done")
    sections.append(table("forward parity (float32, fixtures)", PARITY_COLUMNS, parity_rows))

    runs = ours_train(variants, dtypes, batch, size, boxes, steps, a.workers, log)
    flops = {r["variant"]: r["flops"] for r in runs}
    rows = []
    for r in runs:
        peak = peak_tflops(dev.device_kind, r["dtype"], a.peak_tflops)
        mfu = (100 * r["flops"] / r["step_s"] / (peak * 1e12 * n_dev)) if peak else None
        rows.append(["ours", r["variant"], r["dtype"], f"{r['compile_s']:.1f}",
                     f"{r['step_s']:.4f}", f"{batch / r['step_s']:.1f}",
                     f"{r['flops'] / 1e12:.4g}", _fmt(mfu, ".1f"),
                     _fmt(r["xla_bytes"] / GIB if r["xla_bytes"] else None, ".2f"),
                     _fmt(r["peak_bytes"] / GIB if r["peak_bytes"] else None, ".2f")])
    for o in official:
        peak = peak_tflops(dev.device_kind, "float16", a.peak_tflops)
        f = flops.get(o["variant"], float("nan"))
        mfu = (100 * f / o["step_s"] / (peak * 1e12 * n_dev)) if peak else None
        rows.append(["official", o["variant"], o["dtype"], f"{o['first_s']:.1f}",
                     f"{o['step_s']:.4f}", f"{batch / o['step_s']:.1f}", f"{f / 1e12:.4g}",
                     _fmt(mfu, ".1f"), "-", f"{o['peak_bytes'] / GIB:.2f}"])
    title = (f"train step ({per_device} images/device x {n_dev} = {batch}, {size}x{size}, "
             f"{boxes} boxes/image)")
    if not official:
        title += f"; official AMP skipped: {why_not}"
    sections.append(table(title, TRAIN_COLUMNS, rows))
    for o in official:
        ours = [r for r in runs if r["variant"] == o["variant"]]
        for r in ours:
            sections[-1] += (f"\nratio ours {r['dtype']} / official AMP, {r['variant']}: "
                             f"{o['step_s'] / r['step_s']:.2f}x images/s")

    infer_rows = inference(variants, dtypes[0], infer_batches, size, a.workers, min_time)
    log("inference done")
    sections.append(table(f"inference (device: forward + decode + NMS, {size}x{size})",
                          INFER_COLUMNS, infer_rows))
    peaks = "; ".join(f"{k} {v['bfloat16']:.1f} bf16 / {v['float32']:.1f} tf32"
                      for k, v in PEAK_TFLOPS.items())
    used = peak_tflops(dev.device_kind, dtypes[0], a.peak_tflops)
    sections.append(f"-- MFU peaks (dense TFLOP/s per device) --\n{peaks}; this device: "
                    f"{_fmt(used, '.1f')} for {dtypes[0]}")
    print("\n" + header)
    print("\n\n".join(sections))
    print(f"total wall {time.perf_counter() - t_start:.1f} s")
    failed = [r for r in parity_rows if r[-1] == "FAIL"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
