# Thin wrappers: every target creates or reuses the virtual environment in .venv/ itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.stamp-dev
BSTAMP := $(VENV)/.stamp-bench

.PHONY: all demo test check lint typecheck bench bench-quality clean lock

all: test

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=25.1"
	$(PIP) install -c requirements.lock -e . --group test --group lint
	touch $@

$(BSTAMP): $(STAMP)
	$(PIP) install -c requirements.lock -e . --group bench
	touch $@

demo: $(STAMP)  ## local fake fleet + the EPP + traffic, printed as a table
	$(BIN)/picker demo

test: $(STAMP)  ## the whole suite (what CI runs)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check picker scoring tests benchmarks
	$(BIN)/python -m pytest -q -n 2

check: $(STAMP)  ## static checks: lint, format, types, layers, Dockerfile
	$(BIN)/ruff check picker scoring tests benchmarks
	$(BIN)/ruff format --check picker scoring tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/hadolint Dockerfile

bench: $(BSTAMP)  ## quick benchmark set; rewrites the summary in benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks.run_all --quick --write benchmarks/RESULTS.md

bench-quality: $(BSTAMP)  ## full routing-quality sweep with plots under benchmarks/results/, every trace
	for trace in azure-conv mooncake-conv lora; do \
		$(BIN)/python -m benchmarks.bench_quality --trace $$trace --sweep --plots || exit 1; \
	done

lock:  ## refresh requirements.lock from a clean resolve
	rm -rf /tmp/picker-lock && $(PYTHON) -m venv /tmp/picker-lock
	/tmp/picker-lock/bin/python -m pip install -q --upgrade "pip>=25.1"
	/tmp/picker-lock/bin/python -m pip install -q . --group test --group lint --group bench
	/tmp/picker-lock/bin/python -m pip freeze --exclude picker | sort > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
