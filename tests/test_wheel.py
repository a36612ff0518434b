"""A wheel built from the repository provides the `yolox-jax` command by itself.

`pip wheel . --no-deps` builds it; a venv without system site-packages gets it with
`pip install --no-deps --no-index` and, for the dependencies, links to the packages already
resolved in this test environment (everything of its site-packages but yolox-jax itself: its
dist-info and the editable-install hooks, so the source tree cannot be found), then `pip check`
proves the wheel's declared requirements are satisfied by that set. The commands run from a
folder outside the checkout. A full `pip install wheel` resolving every dependency from the
local mirror gives the same result in ~45 s (measured under load); this takes ~10 s + the
two commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from conftest import REPO, need_shared

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=300):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory):
    t0 = time.perf_counter()
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", tmp / "dist"],
         tmp, env)
    (wheel,) = (tmp / "dist").glob("yolox_jax-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp, env).strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(("__editable__", "yolox_jax", "__pycache__")):
            continue
        (site / entry.name).symlink_to(entry)
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "-q", wheel], tmp, env)
    _run([py, "-m", "pip", "check"], tmp, env)
    setup_s = time.perf_counter() - t0
    yield venv, tmp, env, setup_s
    shutil.rmtree(tmp, ignore_errors=True)


def test_installed_wheel_alone_provides_the_command(clean_venv):
    venv, tmp, env, setup_s = clean_venv
    where = _run([venv / "bin" / "python", "-c",
                  "import yolox_jax, yolox_jax.cli; print(yolox_jax.cli.__file__)"], tmp, env)
    assert where.strip().startswith(str(venv)), where  # not the checkout
    # the native CPU kernels' source travels as package data (compiled on first use)
    assert (Path(where.strip()).parents[1] / "models" / "native.cc").is_file()
    out = _run([venv / "bin" / "yolox-jax", "--help"], tmp, env)
    for name in ("train", "eval", "predict", "export", "convert"):
        assert re.search(rf"^  {name} ", out, re.M), out
    print(f"wheel build + clean venv + install + pip check: {setup_s:.1f} s")


def test_installed_wheel_predicts_dog_with_converted_nano(clean_venv):
    venv, tmp, env, _ = clean_venv
    pth = need_shared("data/weights/yolox_nano.pth")
    dog = need_shared("data/samples/images/dog.jpg")
    exe = venv / "bin" / "yolox-jax"
    t0 = time.perf_counter()
    out = _run([exe, "convert", pth, "--output", tmp / "nano"], tmp, env)
    assert "yolox_nano, 80 classes" in out
    out = _run([exe, "predict", dog, "-c", tmp / "nano", "--no-progress", "--save-result",
                "--output-dir", tmp / "out"], tmp, env)
    line = next(ln for ln in out.splitlines() if ln.startswith("dog.jpg:"))
    # the official demo's result (class-agnostic NMS): dog, bicycle, car
    assert re.fullmatch(r"dog\.jpg: 3 detections: dog 0\.\d+, bicycle 0\.\d+, car 0\.\d+", line)
    assert (tmp / "out" / "dog.jpg").stat().st_size > 10_000
    print(f"installed convert + predict: {time.perf_counter() - t0:.1f} s; {line}")
