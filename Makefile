# Lite Claw backend. Every target creates .venv and installs on first use, so a fresh
# machine with Python 3.11+ needs nothing else: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test unit integration e2e faults lint contracts bench clean help

help:  ## List the targets.
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## Start local NATS + PostgreSQL and all five services (Ctrl-C drains and stops).
	$(BIN)/liteclaw up

test: $(STAMP)  ## The whole suite: unit, integration, e2e and faults, against real servers.
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)  ## Pure domain tests only (seconds).
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP)  ## Tests against a real NATS and PostgreSQL started by the suite.
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: $(STAMP)  ## Tests that start the whole system with `liteclaw up`.
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

faults: $(STAMP)  ## Kill and restart tests.
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff and mypy on the code.
	$(BIN)/ruff check shared services liteclaw tests bench
	$(BIN)/mypy

contracts: $(STAMP)  ## Export JSON Schema and AsyncAPI of the event contracts into shared/contracts/schemas.
	$(BIN)/python -m shared.contracts.export

bench: $(STAMP)  ## Benchmarks; figures printed and written to bench/results/*.json.
	$(BIN)/python -m bench

clean:  ## Remove the virtual environment and local data.
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
