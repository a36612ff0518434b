"""Evaluation sharded over hosts: 2 real processes (`jax.distributed` on 127.0.0.1, 2 CPU devices
each) evaluate the official YOLOX-Nano weights at 416 on the shared COCO subset, read from a
packed shard set, each its half of the images with its local devices; process 0 scores with
pycocotools and shares the numbers. Both processes must report exactly the AP of one process
with one device reading the image files (every COCOeval number, the detection count and the
per-class tables).

The workers run this file as a script; they start with the module (their compiles overlap the
single-process evaluation in the test process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TEST_FILE = Path(__file__).resolve()
COCO_ANN = "annotations/instances_val2017_subset.json"
BATCH = 8


def _predictor(model, variables):
    from yolox_jax.inference import Predictor

    return Predictor(model, variables, input_size=(416, 416), conf=0.001, nms=0.65,
                     pre_nms_topk=None, max_det=None, batch_buckets=(BATCH,))


def _worker(argv: list[str]) -> None:
    pid, port, weights, location, out = int(argv[0]), int(argv[1]), argv[2], argv[3], argv[4]
    parent = os.getppid()

    def watch() -> None:  # a worker whose pytest died exits instead of computing on
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, initialization_timeout=300)
    assert jax.process_count() == 2 and len(jax.local_devices()) == 2, jax.devices()
    from yolox_jax.data.shards import open_shards
    from yolox_jax.eval.evaluator import evaluate_dataset
    from yolox_jax.weights.checkpoint import load_checkpoint

    model, variables, _ = load_checkpoint(weights)
    info = open_shards(location)
    predictor = _predictor(model, variables)
    t0 = time.perf_counter()
    result = evaluate_dataset(predictor, info, batch_size=BATCH, progress=False)
    stats = dict(result.stats, seconds=time.perf_counter() - t0,
                 mesh_devices=int(predictor.mesh.devices.size))
    Path(out).write_text(json.dumps(stats, default=float))
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Pack the COCO subset, start the two evaluating processes; yields a wait function."""
    from conftest import need_shared

    from yolox_jax.data import pack
    from yolox_jax.data.readers import read_coco

    weights = need_shared("data/weights/yolox_nano.pth")
    info = read_coco(need_shared("data/coco_subset"), COCO_ANN)
    tmp = tmp_path_factory.mktemp("sharded_eval")
    location = str(tmp / "coco_val")
    pack.pack_dataset(info, location, name="val", num_shards=3, progress=False)
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = []
    for pid in (0, 1):
        out, log = tmp / f"process{pid}.json", tmp / f"process{pid}.log"
        with open(log, "w") as fh:
            procs.append((subprocess.Popen(
                [sys.executable, str(TEST_FILE), str(pid), str(port), str(weights), location,
                 str(out)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                cwd=TEST_FILE.parents[1]), out, log))
    started = time.time()

    def results() -> list[dict]:
        got = []
        for proc, out, log in procs:
            try:
                proc.wait(timeout=max(900 - (time.time() - started), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode != 0 or not out.exists():
                raise AssertionError(f"eval worker failed (exit {proc.returncode}):\n"
                                     f"{log.read_text()[-3000:]}")
            got.append(json.loads(out.read_text()))
        return got

    yield results
    for proc, _, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_two_processes_give_exactly_the_single_process_ap(two_processes, nano_coco_subset_stats):
    """`nano_coco_subset_stats` (conftest): the same predictor settings, one process with one
    device, reading the image files."""
    from yolox_jax.eval.coco_eval import STAT_KEYS

    single = nano_coco_subset_stats
    # the official numbers (shared/data/README.md), so the comparison is not vacuous
    assert single["num_detections"] == 32574 and abs(single["AP"] - 0.2847) < 1e-3
    for pid, stats in enumerate(two_processes()):
        assert stats["num_images"] == 191 and stats["mesh_devices"] == 2  # its local devices
        for key in (*STAT_KEYS, "num_detections"):
            assert stats[key] == single[key], (pid, key, stats[key], single[key])
        assert stats["per_class_AP"] == pytest.approx(single["per_class_AP"], nan_ok=True, abs=0)
        assert stats["per_class_AR"] == pytest.approx(single["per_class_AR"], nan_ok=True, abs=0)


if __name__ == "__main__":
    sys.path.insert(0, str(TEST_FILE.parent))
    _worker(sys.argv[1:])
