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
def jax_cache(tmp_path_factory) -> Path:
    """One persistent compilation cache for the session: a program compiled by one test module
    (the tiny trainer config's train step) is loaded by the next, and by its subprocesses."""
    return tmp_path_factory.mktemp("jax_cache")
