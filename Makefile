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

.PHONY: help setup venv jars lint test test-unit test-integration soak demo bench clean

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

jars: $(JARS)
$(JARS): deploy/hazelcast/pom.xml deploy/hazelcast/fetch-jars.sh
	@command -v java >/dev/null || { echo "Java 17+ is required for the Hazelcast member" >&2; exit 1; }
	deploy/hazelcast/fetch-jars.sh
	@touch $@

lint: setup  ## ruff (incl. the security rules) and mypy --strict over the packages
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint  ## lint, then the whole suite (unit + integration against a real member)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup  ## only the tests that need no member
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup  ## only the integration tests
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

soak: setup  ## the long soak variants (a time-compressed day; minutes)
	OBF_SOAK=1 $(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

demo: setup  ## run the pipeline locally: member + feeder + worker + live view (Ctrl-C stops)
	$(BIN)/obf-features demo $(DEMO_ARGS)

bench: setup  ## run the benchmarks (prints tables with ratios)
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:  ## remove the venv, jars and run files
	rm -rf $(VENV) .hazelcast .pytest_cache
