"""Where a compiled step spends its time: a jax.profiler trace summed by op, then by kind.

    breakdown = profile_compiled(run, compiled, steps=3, trace_dir="/tmp/trace")
    print(format_breakdown(breakdown))

The trace (`jax.profiler.start_trace(dir, create_perfetto_trace=True)`) holds one event per
executed XLA op (thunk) named as the HLO instruction ("ynn_fusion.425", "convolution.136",
"multiply_add_fusion.1029"); host-side events (dispatch, PjRt) are left out by keeping only
names of the compiled module's instructions. Each instruction is classified from the optimized
HLO text (`compiled.as_text()`): its opcode, the ops inside a fusion, and its `op_name`
metadata (the JAX name stack):

* SimOTA     op_name under a `simota` name scope (the benchmark wraps `simota_assign` in one)
* optimizer  op_name under the `optimizer` scope of `train.step` (SGD, weight decay, EMA)
* convs      convolutions and dots, and fusions holding one (XLA CPU runs most convolutions as
             XNNPACK/YNNPACK "ynn_fusion"s), forward and backward, and the native conv kernels
             (`models/native.py`: depthwise, weight gradients)
* BN + act   the native BatchNorm + activation kernels, forward and backward
* reductions reduce / reduce-window fusions (BatchNorm statistics, max-pool and its gradient)
* data movement  copy / transpose / pad / slice / concatenate / gather / scatter
* elementwise    every other fusion or op that computes (BN normalise, SiLU, adds, ...)
* other      anything left (control flow, custom calls)

Events of ops that run concurrently on several threads overlap: the shares are of the summed op
time, which can exceed the wall time of the step.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

CATEGORIES = ("convs", "BN + act", "elementwise", "reductions", "data movement", "SimOTA",
              "optimizer", "other")
_CONV = {"convolution", "dot"}
_REDUCE = {"reduce", "reduce-window", "select-and-scatter"}
_MOVE = {"copy", "transpose", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
         "concatenate", "gather", "scatter", "broadcast", "reshape", "bitcast", "reverse",
         "iota", "copy-start", "copy-done"}
_CONTROL = {"while", "conditional", "call", "custom-call", "tuple", "get-tuple-element",
            "parameter", "constant", "after-all", "partition-id", "replica-id"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _opcode(rhs: str) -> str:
    """'f32[2,3]{1,0} add(%a, %b), ...' or '(s32[], f32[]) tuple(...)' -> the opcode."""
    end = rhs.find(" ")
    if rhs.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        end = len(rhs)
        for pos, ch in enumerate(rhs):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                end = pos + 1
                break
    rest = rhs[end:].lstrip()
    m = re.match(r"([\w\-]+)\(", rest)
    return m.group(1) if m else rest.split("(", 1)[0]


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
    """Optimized HLO text -> {instruction: {opcode, op_name, calls, computation}} plus, per
    computation, the opcodes, op_names and called computations it holds (key
    "__computations__")."""
    instrs: dict[str, dict[str, Any]] = {}
    comps: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: {"opcodes": set(), "op_names": [], "calls": []})
    current = None
    for line in text.splitlines():
        if line.endswith("{") and " = " not in line.split("{")[0]:
            m = _COMP.match(line)
            current = m.group(1) if m else None
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        name, rhs = m.groups()
        opcode = _opcode(rhs)
        op_name = re.search(r'op_name="([^"]*)"', rhs)
        calls = re.search(r"calls=%?([\w.\-]+)", rhs)
        target = re.search(r'custom_call_target="([^"]*)"', rhs)
        instrs[name] = {"opcode": opcode, "op_name": op_name.group(1) if op_name else "",
                        "calls": calls.group(1) if calls else None, "computation": current,
                        "target": target.group(1) if target else ""}
        comps[current]["opcodes"].add(opcode)
        if calls:
            comps[current]["calls"].append(calls.group(1))
        if op_name:
            comps[current]["op_names"].append(op_name.group(1))
    instrs["__computations__"] = dict(comps)  # type: ignore[assignment]
    return instrs


def _resolve(name: str, hlo: dict[str, dict[str, Any]]) -> tuple[set[str], str]:
    """(opcodes of the instruction and of the computations it calls, its op_name: its own, else
    the first one inside its fusion)."""
    ins = hlo[name]
    comps = hlo["__computations__"]
    op_names = [ins["op_name"]] if ins["op_name"] else []
    opcodes = {ins["opcode"]}
    todo = [ins["calls"]] if ins["calls"] else []
    seen: set[str] = set()
    while todo:  # the ops inside a fusion (and nested fusions)
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        opcodes |= comps[c]["opcodes"]
        if not op_names:
            op_names = comps[c]["op_names"][:1]
        todo.extend(comps[c]["calls"])
    return opcodes, (op_names[0] if op_names else "")


def _scopes(op_name: str) -> set[str]:
    """'jit(step)/jvp(simota)/sub' -> {'step', 'simota', 'sub'}: the name stack's parts without
    the transformations wrapped around them (jit, jvp, transpose, vmap, ...)."""
    return {re.sub(r"^(?:[\w.]+\()+|\)+$", "", part) for part in op_name.split("/")}


def classify(name: str, hlo: dict[str, dict[str, Any]]) -> str:
    """The category (see the module docstring) of instruction `name`."""
    opcodes, scope = _resolve(name, hlo)
    scopes = _scopes(scope)
    if "simota" in scopes:
        return "SimOTA"
    if "optimizer" in scopes:
        return "optimizer"
    target = hlo[name].get("target", "")
    if target.startswith("yolox_jax_bn_act"):
        return "BN + act"
    if target.startswith(("yolox_jax_depthwise", "yolox_jax_conv")):
        return "convs"
    if opcodes & _CONV:
        return "convs"
    if opcodes & _REDUCE:
        return "reductions"
    computing = opcodes - _MOVE - _CONTROL - {"fusion"}
    if computing:
        return "elementwise"
    if opcodes & _MOVE:
        return "data movement"
    return "other"


def load_trace_events(trace_dir: str | Path) -> list[dict[str, Any]]:
    """The complete ('X') events of the newest perfetto / trace json under `trace_dir`."""
    files = sorted(Path(trace_dir).rglob("*.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.json.gz trace under {trace_dir}")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def breakdown(events: list[dict[str, Any]], hlo: dict[str, dict[str, Any]], steps: int
              ) -> dict[str, Any]:
    """Per-step milliseconds by category and the top ops, from the trace of `steps` steps."""
    per_op: dict[str, float] = collections.Counter()
    for e in events:
        if e["name"] in hlo and e["name"] != "__computations__":
            per_op[e["name"]] += float(e["dur"]) / 1e3  # us -> ms
    by_cat = dict.fromkeys(CATEGORIES, 0.0)
    for name, ms in per_op.items():
        by_cat[classify(name, hlo)] += ms
    total = sum(by_cat.values())
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
    return {
        "ms_per_step": {k: v / steps for k, v in by_cat.items()},
        "op_ms_per_step": total / steps,
        "top": [(n, ms / steps, classify(n, hlo), _resolve(n, hlo)[1][-70:]) for n, ms in top],
        "num_ops": len(per_op),
    }


def profile_compiled(run: Callable[[], Any], compiled: Any, steps: int,
                     trace_dir: str | Path) -> dict[str, Any]:
    """Trace `steps` calls of `run()` (each one step, blocking) and break the time down by the
    instructions of `compiled` (a `jax.stages.Compiled`)."""
    import time

    import jax

    hlo = parse_hlo(compiled.as_text())
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    t = time.perf_counter()
    try:
        for _ in range(steps):
            run()
    finally:
        wall = time.perf_counter() - t
        jax.profiler.stop_trace()
    out = breakdown(load_trace_events(trace_dir), hlo, steps)
    out["wall_ms_per_step"] = 1e3 * wall / steps
    return out


def format_breakdown(b: dict[str, Any], title: str = "") -> str:
    """The breakdown as a table: category, ms per step, share of the op time; then top ops."""
    total = max(b["op_ms_per_step"], 1e-9)
    lines = [f"time breakdown{' ' + title if title else ''} ({b['num_ops']} ops traced; op time "
             f"{b['op_ms_per_step']:.1f} ms/step, wall {b['wall_ms_per_step']:.1f} ms/step)",
             f"{'category':16s} {'ms/step':>9s} {'share':>7s}"]
    for k in CATEGORIES:
        ms = b["ms_per_step"][k]
        lines.append(f"{k:16s} {ms:9.1f} {100 * ms / total:6.1f}%")
    lines.append(f"top ops: {'ms/step':>9s}  {'category':14s} op_name")
    for name, ms, cat, op_name in b["top"]:
        lines.append(f"  {name[:32]:32s} {ms:8.2f}  {cat:14s} {op_name}")
    return "\n".join(lines)
