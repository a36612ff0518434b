#!/usr/bin/env bash
# The wheels benchmarks/gpu_suite.sh needs on the GPU machine (Python 3.12, x86-64, no network),
# where jax, flax, optax, orbax, numpy, opencv, tqdm, absl, pillow, torch, tabulate and psutil
# already are (/work/.library/device/KINDS.md). Run here, in the repository root; the wheels go
# to .whl/ (or $1). One version of each, no dependencies resolved by pip (--no-deps): every
# missing dependency is named here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
WHEELS=(
  grain==0.2.18 array_record==0.8.6 portpicker==1.6.0   # the training data pipeline
  ml_collections==1.1.0                                  # configs
  pycocotools==2.0.11                                    # COCO evaluation
  tensorboardX==2.6.5                                    # training logs
  loguru==0.7.3 thop==0.1.1.post2209072238               # the official YOLOX code's imports
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any -d "$DEST" "${WHEELS[@]}"
ls -1 "$DEST"
