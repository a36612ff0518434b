#!/usr/bin/env bash
# The GPU suite: one command on a lent GPU machine (< 8 min on one H100), printing one report.
#
#   benchmarks/gpu_suite.sh                 # on the GPU: yolox_s and yolox_l, 640, 16 img/device
#   benchmarks/gpu_suite.sh --tiny          # anywhere (CPU): nano, 64x64, tiny batches (tests)
#   benchmarks/gpu_suite.sh --help          # every option of benchmarks/gpu_suite.py
#
# What it measures (benchmarks/gpu_suite.py): float32 forward parity against the fixtures; our
# train step (bf16 and float32) and the official PyTorch AMP step on the same batch (16 images
# per device, 120 boxes each): images/s, model TFLOP per step, MFU, compiled and runtime peak
# memory; inference images/s at batch 1 and 32.
#
# On the device machine (no network): the packages it lacks travel as wheels in .whl/ and the
# official YOLOX code in .official/ (both ignored by git, both named in the run's `carry`).
# Prepare them once here, in the repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.official/ >> .git/info/exclude
#   benchmarks/fetch_gpu_wheels.sh            # downloads the cp312 manylinux wheels into .whl/
#   cp -r /tmp/yolox_official .official       # an official YOLOX checkout (commit 6ddff48)
# then run, with carry [".whl", ".official"]:
#   benchmarks/gpu_suite.sh 2>&1 | tee $OUT/gpu_suite.log
set -euo pipefail
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/yolox_jax_site .whl/*.whl
  export PYTHONPATH=/tmp/yolox_jax_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# JAX takes GPU memory as it needs it, so that the official PyTorch step (run first, in the same
# process) and the runtime's peak statistics are not distorted by a 75 % preallocation.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OFFICIAL=${YOLOX_OFFICIAL:-.official}
exec "$PY" benchmarks/gpu_suite.py --official "$OFFICIAL" "$@"
