"""The benchmark scripts run end to end at tiny sizes on the CPU, so they cannot rot:
`benchmarks/train_step.py --profile` (table + time breakdown from a real trace) and
`benchmarks/gpu_suite.sh --tiny` (the report the first lent GPU will print).

Timings are not checked (benchmarks report them, tests do not time); the formats and the
breakdown's bookkeeping are.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from yolox_jax.models import native

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cache: Path, timeout: int = 900) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", YOLOX_JAX_COMPILATION_CACHE=str(cache),
               PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def cache(jax_cache):
    return jax_cache


def test_train_step_benchmark_profile(cache, tmp_path):
    out = _run([sys.executable, "benchmarks/train_step.py", "--variants", "tiny", "--size", "64",
                "--batch", "2", "--boxes", "3", "--steps", "1", "--profile",
                "--profile-steps", "1", "--profile-dir", str(tmp_path / "trace")], cache)
    print(out)
    lines = out.splitlines()
    header = next(i for i, x in enumerate(lines) if x.startswith("variant"))
    assert lines[header].split() == ["variant", "compile", "s", "cache", "s/step", "img/s",
                                     "SimOTA", "%"]
    row = lines[header + 1].split()
    assert row[0] == "yolox_tiny" and row[2] in ("hit", "miss")
    assert float(row[3]) > 0 and float(row[4]) > 0 and row[5].endswith("%")

    start = next(i for i, x in enumerate(lines) if x.startswith("time breakdown yolox_tiny"))
    m = re.search(r"\((\d+) ops traced; op time ([\d.]+) ms/step, wall ([\d.]+) ms/step\)",
                  lines[start])
    assert m and int(m.group(1)) > 100, lines[start]
    op_ms = float(m.group(2))
    assert lines[start + 1].split() == ["category", "ms/step", "share"]
    shares = {}
    for line in lines[start + 2:start + 10]:
        name, ms, share = line.rsplit(None, 2)
        shares[name.strip()] = (float(ms), float(share.rstrip("%")))
    assert list(shares) == ["convs", "BN + act", "elementwise", "reductions", "data movement",
                            "SimOTA", "optimizer", "other"]
    assert sum(s for _, s in shares.values()) == pytest.approx(100, abs=0.5)
    assert sum(ms for ms, _ in shares.values()) == pytest.approx(op_ms, rel=0.02, abs=0.2)
    # every part of the step was found: convolutions, SimOTA (its name scope) and the SGD/EMA
    # update (the step's `optimizer` scope)
    for k in ("convs", "elementwise", "SimOTA", "optimizer"):
        assert shares[k][0] > 0, (k, shares)
    if native.load():  # the native BN kernels are found by their custom-call target
        assert shares["BN + act"][0] > 0, shares
    assert lines[start + 10].startswith("top ops:")
    assert list((tmp_path / "trace").rglob("*.json.gz"))


def test_gpu_suite_runs_at_tiny_sizes(cache):
    out = _run(["bash", "benchmarks/gpu_suite.sh", "--tiny", "--dtypes", "float32"], cache)
    report = out[out.rindex("== yolox-jax GPU suite"):]
    print(out)
    lines = report.splitlines()
    assert re.match(r"== yolox-jax GPU suite: .+ x1 \(cpu, jax [\d.]+; .+\) ==", lines[0])

    def section(title: str) -> list[list[str]]:
        i = next(i for i, x in enumerate(lines) if x.startswith(f"-- {title}"))
        rows = []
        for x in lines[i + 1:]:
            if not x.strip() or x.startswith(("--", "ratio")):
                break
            rows.append(re.split(r"\s{2,}", x.strip()))
        return rows

    parity = section("forward parity")
    assert parity[0] == ["variant", "input", "precision", "max rel err", "bar", "result"]
    assert [r[:2] for r in parity[1:]] == [["yolox_tiny", "2x128x192"]]
    assert all(r[2] == "highest" and r[5] == "PASS" and float(r[3]) < 1e-4 for r in parity[1:])

    train = section("train step (2 images/device x 1 = 2, 64x64, 4 boxes/image)")
    assert train[0] == ["impl", "variant", "dtype", "compile s", "s/step", "img/s", "TFLOP/step",
                        "MFU %", "XLA GiB", "peak GiB"]
    assert len(train) == 2
    impl, variant, dtype, comp, s_step, ips, tflop, mfu, xla_gib, peak = train[1]
    assert (impl, variant, dtype) == ("ours", "yolox_tiny", "float32")
    assert float(s_step) > 0 and float(ips) > 0 and float(tflop) > 0
    assert mfu == "-" and peak == "-"  # no peak FLOP/s known for the CPU, no runtime stats
    assert float(xla_gib) > 0
    assert "official AMP skipped" in report  # no CUDA torch here

    infer = section("inference")
    assert infer[0] == ["variant", "dtype", "batch", "compile s", "ms/batch", "img/s"]
    assert [r[2] for r in infer[1:]] == ["1", "2"]
    assert all(float(r[5]) > 0 for r in infer[1:])
    assert "-- MFU peaks" in report and re.search(r"total wall [\d.]+ s", report)
