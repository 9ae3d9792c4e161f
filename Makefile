# One command each for set-up, the main job, and the tests; all start from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch sits in a local wheel folder on this machine kind; elsewhere pip uses PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/pip install --quiet $(FIND_LINKS) -c constraints.txt

.PHONY: setup demo lint test test-fast test-faults bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	cluster/install_debian.sh redis-server
	touch $@

demo: setup
	$(BIN)/lakeloop demo

# ruff (lint and format) and the import contracts (pyproject.toml [tool.importlinter]) run before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows cluster/ci/*.yml

# The fault-injection suite (tests/faults, about 12 min here) runs on its own: `make test-faults` (CI runs both).
test: lint
	$(BIN)/pytest -m "not faults"

test-fast: lint
	$(BIN)/pytest -m "not slow and not integration"

test-faults: lint
	$(BIN)/pytest -m faults -s

# Each benchmark writes bench-results/<name>.json; the report merges them into results.md/.json.
bench: setup
	$(PIP) -e '.[bench]'
	cluster/install_debian.sh wrk
	$(BIN)/python -m benchmarks.serve_load
	$(BIN)/python -m benchmarks.wide_pyfunc
	$(BIN)/python -m benchmarks.preprocessing
	$(BIN)/python -m benchmarks.point_in_time
	$(BIN)/python -m benchmarks.online_lookup
	$(BIN)/python -m benchmarks.training
	$(BIN)/python -m benchmarks.batch_inference
	$(BIN)/python -m benchmarks.drift_stats
	$(BIN)/python -m benchmarks.online_gate
	$(BIN)/python -m benchmarks.loop
	$(BIN)/python -m benchmarks.recovery
	$(BIN)/python -m benchmarks.learning_curve --draws 3
	$(BIN)/python -m benchmarks.object_store
	$(BIN)/python -m benchmarks.table_upkeep
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf $(VENV) lakeloop-data bench-results
