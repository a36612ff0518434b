"""Shared test helpers: where the reference material lives, and skips with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# grain's worker processes read absl flags; mark them parsed before anything starts workers.
from absl import flags

flags.FLAGS.mark_as_parsed()

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # purely numeric copies of the official fixtures
SHARED = Path(os.environ.get("YOLOX_JAX_SHARED", REPO.parent / "shared"))
SHARED_FIXTURES = SHARED / "fixtures"
SHARED_DATA = SHARED / "data"


def need_shared(relpath: str) -> Path:
    """Path under ../shared, or skip the test saying what is missing."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f"needs the local mirror file {path} (../shared is absent on this clone)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return need_shared("data")


@pytest.fixture(scope="session")
def nano_coco_subset_stats() -> dict:
    """Official YOLOX-Nano weights at 416 on the COCO subset, one process, the official
    COCOEvaluator settings (conf 0.001, NMS 0.65, every anchor into NMS, batch 8): the stats.
    Computed once per session (~25 s on 2 cores) for the parity and sharded-evaluation tests."""
    from yolox_jax.data.readers import read_coco
    from yolox_jax.eval.evaluator import evaluate_dataset
    from yolox_jax.inference import Predictor
    from yolox_jax.weights.checkpoint import load_checkpoint

    model, variables, _ = load_checkpoint(need_shared("data/weights/yolox_nano.pth"))
    info = read_coco(need_shared("data/coco_subset"), "annotations/instances_val2017_subset.json")
    predictor = Predictor(model, variables, input_size=(416, 416), conf=0.001, nms=0.65,
                          pre_nms_topk=None, max_det=None, batch_buckets=(8,))
    return evaluate_dataset(predictor, info, batch_size=8, progress=False).stats


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> Path:
    """One persistent compilation cache for the session: a program compiled by one test module
    (the tiny trainer config's train step) is loaded by the next, and by its subprocesses.
    Under pytest-xdist all workers share it (the folder above each worker's own temp root)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
    path.mkdir(exist_ok=True)
    return path
