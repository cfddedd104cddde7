# Thin wrappers: every target creates or reuses the virtual environment in .venv/ itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.stamp-dev
BSTAMP := $(VENV)/.stamp-bench
UV_VERSION := 0.13.9
# Python 3.11 on Linux, like the image; hashes cover every wheel and sdist of each pinned version (all CPUs).
UV_COMPILE := /tmp/picker-lock/bin/uv pip compile --python-version 3.11 --python-platform linux \
	--generate-hashes --no-header --quiet

.PHONY: all demo test check lint typecheck bench bench-quality bench-capacity clean lock

all: test

# The lock's versions as plain constraints: pip treats hashes in a constraints file as a demand to hash-check
# everything, which an editable install of this checkout cannot satisfy (the image build checks the hashes).
PINS   := $(VENV)/pins.txt
# xds-protos ships an old copy of opentelemetry-proto's modules at the same paths (grpc/grpc#42926), and the
# install order decides whose files stay: the pinned opentelemetry-proto is installed once more, alone and
# last, so --tracing's OTLP exporter gets the current ones (the Dockerfile does the same).
OTEL_PROTO_LAST = $(PIP) install --no-deps --force-reinstall "$$(grep -m1 '^opentelemetry-proto==' $(PINS))"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=25.1"
	sed -e '/^[[:space:]]*--hash=/d' -e 's/[[:space:]]*\\$$//' requirements.lock > $(PINS)
	$(PIP) install -c $(PINS) -e . --group test --group lint
	$(OTEL_PROTO_LAST)
	touch $@

$(BSTAMP): $(STAMP)
	$(PIP) install -c $(PINS) -e . --group bench
	$(OTEL_PROTO_LAST)
	touch $@

demo: $(STAMP)  ## local fake fleet + the EPP + traffic, printed as a table
	$(BIN)/picker demo

test: $(STAMP)  ## the whole suite (what CI runs)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check picker scoring tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --durations=20  # the slowest tests: the suite must stay under 10 minutes

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

bench-capacity: $(BSTAMP)  ## capacity at SLO per policy, every workload, seeds 0-2 (the routing yardstick; 1.2-3.4 CPU-hours: benchmarks/RESULTS.md)
	$(BIN)/python -m benchmarks.sim.capacity_sweep --workers 2

lock:  ## refresh the three locks from one resolve, with hashes for every file on the index (uv resolves)
	rm -rf /tmp/picker-lock && $(PYTHON) -m venv /tmp/picker-lock
	/tmp/picker-lock/bin/python -m pip install -q "uv==$(UV_VERSION)"
	$(UV_COMPILE) pyproject.toml --group test --group lint --group bench -o requirements.lock
	$(UV_COMPILE) pyproject.toml --constraints requirements.lock -o requirements-image.lock
	$(UV_COMPILE) --group pyproject.toml:build -o requirements-build.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
