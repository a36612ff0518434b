# Two commands: `make quickstart` and `make test`. Both work on a fresh machine with only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: quickstart test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,plots,export,openvino]"
	touch $(STAMP)

venv: $(STAMP)

# Two pytest workers (pytest-xdist), one test file each at a time: most tests are single-threaded
# XLA compilation, so two cores run the suite ~1.3x faster. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

quickstart: $(STAMP)
	$(PY) -m yolox_jax.quickstart --output-dir quickstart_out

clean:
	rm -rf $(VENV) quickstart_out
