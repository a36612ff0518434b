"""Images/s of the full train step (forward, SimOTA, losses, backward, SGD, EMA) per variant.

    python benchmarks/train_step.py --variants nano,s --size 640 --batch 8 [--steps 5]
        [--dtype bfloat16] [--official /path/to/YOLOX] [--profile] [--no-cache]

Prints one row per variant: compile time, seconds per step, images/s, and the share of the step
spent in SimOTA (the jitted assignment alone on the same predictions, over the step time).
Programs come from the persistent compilation cache (`yolox_jax.train.compile`) when this
configuration ran before: the `cache` column says "hit" (the compile time is then the load
time) or "miss"; `--no-cache` always compiles. With
`--official PATH` (an official YOLOX checkout and `torch==2.13.0`; torchvision is not needed) the
official model's training forward + loss + backward + SGD step runs on the same batch in the same
process, and the ratio ours / official is printed. The two are timed step by step in turn (one
of ours, one official, `--steps` times): this machine's speed drifts by +-25% over tens of seconds,
and alternating puts both under the same conditions.

`--profile` then traces `--profile-steps` steps per variant with jax.profiler and prints where
the time goes: convs / elementwise / reductions / data movement / SimOTA / optimizer / other
(see benchmarks/trace_breakdown.py for the rules) and the top ops. SimOTA is found by a
`simota` name scope the benchmark puts around `simota_assign` (names only: same numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # trace_breakdown


def synthetic_batch(batch: int, size: int, num_boxes: int, max_labels: int, seed: int = 0):
    """uint8 BGR images [B, S, S, 3] and labels [B, max_labels, 5] (class, cx, cy, w, h)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = np.zeros((batch, max_labels, 5), np.float32)
    for b in range(batch):
        wh = rng.uniform(16, size / 3, (num_boxes, 2))
        c = rng.uniform(wh / 2, size - wh / 2)
        labels[b, :num_boxes] = np.column_stack(
            [rng.integers(0, 80, num_boxes), c, wh]).astype(np.float32)
    return images, labels


def _timeit(fn, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _timeit_alternating(fn, partner, steps: int) -> tuple[list[float], list[float]]:
    """fn and partner timed in turn, `steps` times each: (fn's times, partner's times)."""
    ours, theirs = [], []
    for _ in range(steps):
        ours += _timeit(fn, 1)
        theirs += _timeit(partner, 1)
    return ours, theirs


def bench_ours(variant: str, images, labels, steps: int, dtype: str, *,
               profile_dir: str | None = None, profile_steps: int = 3,
               simota: bool = True, partner=None) -> dict:
    """Our train step on the global batch (images, labels) over all devices.

    Returns compile_s (lower + compile: the load time on a cache hit), cache ("hit" / "miss"),
    step_s (median), images_per_s, simota_share, loss, flops (XLA's cost analysis of one step),
    memory (the compiled program's argument / output / temp bytes), peak_bytes (the device's
    peak bytes in use, where the runtime reports it), breakdown (with `profile_dir`)."""
    import jax

    from yolox_jax.config import variant_config
    from yolox_jax.models.yolox import build_model, init_variables
    from yolox_jax.train.compile import CacheHits
    from yolox_jax.train.optim import make_optimizer
    from yolox_jax.train.simota import simota_assign
    from yolox_jax.train.state import create_train_state
    from yolox_jax.train.step import global_batch, make_mesh, make_train_step, replicated

    config = variant_config(variant)
    config.model.dtype = dtype
    size = images.shape[1]
    model = build_model(config)
    variables = init_variables(model, jax.random.key(0), (size, size))
    tx, schedule = make_optimizer(config.train, images.shape[0], 1000)
    mesh = make_mesh()
    state = jax.device_put(create_train_state(variables, tx, 0), replicated(mesh))
    with _simota_scope(profile_dir is not None):
        step_fn = make_train_step(model, tx, schedule, mesh)
        x, y = global_batch(mesh, images, labels)
        t = time.perf_counter()
        with CacheHits() as hits:
            compiled = step_fn.lower(state, x, y, None).compile()  # the jitted step reuses it
        compile_s = time.perf_counter() - t
    state, m = step_fn(state, x, y, use_l1=False, size=None)
    jax.block_until_ready(m)
    holder = {"state": state}

    def one():
        holder["state"], metrics = step_fn(holder["state"], x, y, use_l1=False, size=None)
        jax.block_until_ready(metrics)

    partner_times = []
    if partner is None:
        times = _timeit(one, steps)
    else:  # the official step, timed in turn with ours
        times, partner_times = _timeit_alternating(one, partner, steps)
    step_s = statistics.median(times)
    out = dict(partner_step_s=statistics.median(partner_times) if partner_times else None,
               compile_s=compile_s, cache="hit" if hits.count("jit_step") else "miss",
               step_s=step_s, images_per_s=images.shape[0] / step_s, loss=float(m["total"]),
               flops=_flops(compiled), memory=_memory(compiled), peak_bytes=_peak_bytes())
    if profile_dir is not None:
        from trace_breakdown import profile_compiled

        out["breakdown"] = profile_compiled(one, compiled, profile_steps,
                                            Path(profile_dir) / variant)

    out["simota_share"] = float("nan")
    if simota:  # SimOTA alone on this batch's predictions
        pred = model.apply(holder["state"].variables(False), x.astype("float32"), train=True,
                           mutable=["batch_stats"])[0]
        valid = y.sum(-1) > 0  # the official rule: a label row is a box iff its sum > 0
        assign = jax.jit(simota_assign)
        args = (pred["outputs"][..., :4], pred["outputs"][..., 5:], pred["outputs"][..., 4],
                pred["grid"], pred["strides"], y, valid)
        jax.block_until_ready(assign(*args))
        simota_s = statistics.median(_timeit(lambda: jax.block_until_ready(assign(*args)),
                                             steps))
        out["simota_share"] = simota_s / step_s
    return out


def _simota_scope(enabled: bool):
    """Within: `simota_assign` as the losses call it runs under a `simota` name scope (the
    profile breakdown finds its ops by it; the computation is unchanged)."""
    import contextlib

    @contextlib.contextmanager
    def scoped():
        import jax

        from yolox_jax.train import losses

        real = losses.simota_assign

        def named(*args, **kwargs):
            with jax.named_scope("simota"):
                return real(*args, **kwargs)

        losses.simota_assign = named
        try:
            yield
        finally:
            losses.simota_assign = real

    return scoped() if enabled else contextlib.nullcontext()


def _flops(compiled) -> float:
    """XLA's FLOP count of one execution (nan where the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return float("nan")
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _memory(compiled) -> dict[str, int]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {k: int(getattr(m, k, 0) or 0) for k in keys}


def _peak_bytes() -> int | None:
    """The runtime's peak bytes in use on device 0 (None where it keeps no statistics, e.g.
    the CPU backend)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def official_step(path: str, variant: str, images, labels):
    """The official train step on (images, labels): (a callable running one step, the first
    step's seconds)."""
    try:
        import torch
    except ImportError:
        raise SystemExit("--official needs torch: pip install torch==2.13.0 (CPU)") from None
    sys.path.insert(0, path)
    _stub_torchvision()
    from yolox.exp import get_exp

    exp = get_exp(None, variant.replace("_", "-").replace("darknet53", "yolov3"))
    model = exp.get_model()
    model.train()
    opt = exp.get_optimizer(images.shape[0])
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32))
    y = torch.from_numpy(labels)

    def one():
        opt.zero_grad()
        loss = model(x, y)["total_loss"]
        loss.backward()
        opt.step()

    t = time.perf_counter()
    one()
    return one, time.perf_counter() - t


def bench_official(path: str, variant: str, images, labels, steps: int) -> dict:
    one, first = official_step(path, variant, images, labels)
    step_s = statistics.median(_timeit(one, steps))
    return dict(first_s=first, step_s=step_s, images_per_s=images.shape[0] / step_s)


def _stub_torchvision() -> None:
    """The official code imports torchvision (for NMS only, unused in training)."""
    import types

    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tv.ops = types.ModuleType("torchvision.ops")
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.ops"] = tv.ops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="nano,s")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--boxes", type=int, default=20, help="boxes per image")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--official", default=None, help="official YOLOX checkout (needs torch)")
    p.add_argument("--profile", action="store_true",
                   help="trace the steps and print the time breakdown per variant")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--profile-dir", default=None, help="where traces go (default: a temp dir)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not use the persistent compilation cache")
    args = p.parse_args(argv)

    import tempfile

    import jax

    from yolox_jax.train.compile import enable_compilation_cache

    if not args.no_cache:
        print(f"compilation cache: {enable_compilation_cache()}")
    profile_dir = None
    if args.profile:
        profile_dir = args.profile_dir or tempfile.mkdtemp(prefix="yolox_jax_trace_")
        # The breakdown reads the executable's op names (the simota scope): a cached program
        # compiled without that scope (same key by default: names are not part of it) must
        # not be loaded for a profile.
        jax.config.update("jax_compilation_cache_include_metadata_in_key", True)

    images, labels = synthetic_batch(args.batch, args.size, args.boxes, 120)
    print(f"backend {jax.default_backend()} ({jax.device_count()} devices), batch {args.batch}, "
          f"{args.size}x{args.size}, {args.boxes} boxes/image, {args.dtype}")
    header = (f"{'variant':16s} {'compile s':>9s} {'cache':>5s} {'s/step':>8s} {'img/s':>8s} "
              f"{'SimOTA %':>9s}")
    if args.official:
        header += f" {'official img/s':>15s} {'ratio':>6s}"
    print(header)
    results = []
    for v in args.variants.split(","):
        name = v if v.startswith("yolox_") else f"yolox_{v}"
        partner = None
        if args.official:
            partner, _ = official_step(args.official, name, images, labels)
        r = bench_ours(name, images, labels, args.steps, args.dtype, profile_dir=profile_dir,
                       profile_steps=args.profile_steps, partner=partner)
        results.append((name, r))
        row = (f"{name:16s} {r['compile_s']:9.1f} {r['cache']:>5s} {r['step_s']:8.3f} "
               f"{r['images_per_s']:8.2f} {100 * r['simota_share']:8.1f}%")
        if args.official:
            official_ips = images.shape[0] / r["partner_step_s"]
            row += f" {official_ips:15.2f} {r['images_per_s'] / official_ips:6.2f}"
        print(row, flush=True)
    if args.profile:
        from trace_breakdown import format_breakdown

        for name, r in results:
            print()
            print(format_breakdown(r["breakdown"], f"{name} {args.dtype} batch {args.batch} "
                                   f"{args.size}x{args.size}"))
        print(f"traces: {profile_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
