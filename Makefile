# obf-features: the two commands are `make demo` (run the pipeline locally) and
# `make test` (the whole suite against a real Hazelcast member). Both set up
# everything they need (venv, member jars) and are idempotent.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JARS   := .hazelcast/lib/.fetched
# The NautilusTrader tests (tests/nautilus) run in a second venv: nautilus_trader 1.231.0 needs
# Python 3.12 (1.221.0, the last for 3.11, crashes in BacktestEngine.run() here), while the
# project venv stays on $(PYTHON). The first Python 3.12 found: on PATH, else a pyenv install.
NAUTILUS_PYTHON ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo "$$p"; break; }; done)
NVENV  := .venv-nautilus
NBIN   := $(NVENV)/bin
NSTAMP := $(NVENV)/.installed

# The member versions of `make test-versions` (the default one, in deploy/hazelcast/pom.xml, first)
# and the tests it runs against each: a small subset, the whole suite runs against the default.
HZ_VERSIONS   ?= 5.5.0 5.6.0 5.7.0
VERSION_TESTS ?= tests/integration/test_smoke_grid.py tests/integration/test_worker.py \
                 tests/integration/test_ordering.py

.PHONY: help setup venv jars nautilus-venv lint test test-unit test-integration test-nautilus test-versions soak demo bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

setup: venv jars  ## create/refresh the venv and fetch the member jars

venv: $(STAMP)
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

nautilus-venv: $(NSTAMP)  ## create/refresh the Python 3.12 venv of the NautilusTrader tests
$(NSTAMP): pyproject.toml
	@test -n "$(NAUTILUS_PYTHON)" || { echo "Python 3.12 is required for the NautilusTrader tests (set NAUTILUS_PYTHON=...)" >&2; exit 1; }
	@test -x $(NBIN)/python || $(NAUTILUS_PYTHON) -m venv $(NVENV)
	$(NBIN)/python -m pip install -q --upgrade pip
	$(NBIN)/python -m pip install -q -e ".[test,nautilus]"
	@touch $@

jars: $(JARS)
$(JARS): deploy/hazelcast/pom.xml deploy/hazelcast/fetch-jars.sh
	@command -v java >/dev/null || { echo "Java 17+ is required for the Hazelcast member" >&2; exit 1; }
	deploy/hazelcast/fetch-jars.sh
	@touch $@

lint: setup  ## ruff (incl. the security rules) and mypy --strict over the packages
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint nautilus-venv  ## lint, then the whole suite (unit + integration against a real member), then the Nautilus tests
	$(BIN)/python -m pytest --ignore=tests/nautilus $(PYTEST_ARGS)
	$(NBIN)/python -m pytest tests/nautilus $(PYTEST_ARGS)

test-nautilus: setup nautilus-venv  ## only the NautilusTrader tests (Python 3.12 venv)
	$(NBIN)/python -m pytest tests/nautilus $(PYTEST_ARGS)

test-unit: setup  ## only the tests that need no member
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup  ## only the integration tests
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-versions: setup  ## run VERSION_TESTS against each member version in HZ_VERSIONS (local JVM members)
	@for v in $(HZ_VERSIONS); do \
	  deploy/hazelcast/fetch-jars.sh $$v; \
	  echo "== Hazelcast $$v: $(VERSION_TESTS)"; \
	  OBF_TEST_HZ_MODE=local OBF_TEST_HZ_VERSION=$$v $(BIN)/python -m pytest $(VERSION_TESTS) $(PYTEST_ARGS) \
	    || { echo "== FAILED against Hazelcast $$v" >&2; exit 1; }; \
	done

soak: setup  ## the long soak variants (a time-compressed day; minutes)
	OBF_SOAK=1 $(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

demo: setup  ## run the pipeline locally: member + feeder + worker + live view (Ctrl-C stops)
	$(BIN)/obf-features demo $(DEMO_ARGS)

bench: setup  ## run the benchmarks on this checkout and the previous design; summary of the targets
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:  ## remove the venv, jars and run files
	rm -rf $(VENV) $(NVENV) .hazelcast .pytest_cache .bench-previous
