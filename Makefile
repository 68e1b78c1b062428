# Every target creates the virtual environment on first use; nothing needs installing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make run` installs what serving needs, the dev tools come with the first
# target that uses them (tests, lint, demo, benchmarks).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
CONFIG ?= providers.yaml

.DEFAULT_GOAL := help
.PHONY: help venv run check demo test lint fmt clean bench bench-compare

help:
	@echo "make run      start the proxy with $(CONFIG)"
	@echo "make check    validate $(CONFIG) and print the routing table"
	@echo "make demo     a fake upstream and the proxy: see a streamed answer without API keys"
	@echo "make test     run the test suite"
	@echo "make lint     ruff, mypy --strict and hadolint (Dockerfile)"
	@echo "make bench    the proxy against the upstream alone (BENCH_QUICK=1: ~1 min)"
	@echo "make bench-compare   the same, also against bare aiohttp, nginx and LiteLLM"

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

venv: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m proxy serve --config $(CONFIG)

check: $(RUN_STAMP)
	$(BIN)/python -m proxy check --config $(CONFIG)

demo: $(DEV_STAMP)
	$(BIN)/python -m tests.fakes.demo

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check proxy tests
	$(BIN)/ruff format --check proxy tests
	$(BIN)/mypy proxy
	$(BIN)/hadolint --failure-threshold style Dockerfile

fmt: $(DEV_STAMP)
	$(BIN)/ruff format proxy tests
	$(BIN)/ruff check --fix proxy tests

# Benchmarks (README, "Performance"); they install wrk, nginx and LiteLLM when missing.
bench: $(DEV_STAMP)
	$(BIN)/python -m tests.bench.run

bench-compare: $(DEV_STAMP)
	$(BIN)/python -m tests.bench.run --compare

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
