# The two commands a new user needs:  `make up`  and  `make test`.
# Both create .venv and install streamrec into it on first use (and again when pyproject changes).
#
# torch is pinned to 2.13.0 and installed first, CPU-only. If your pip has no local CPU wheel,
# point it at PyTorch's CPU index:  make up TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIP_ARGS ?=
ARGS ?=

.PHONY: install up test lint format bench-ingest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

## Bring the whole system up on the embedded defaults (Kafka, Redis, SQL in-process).
up: install
	$(BIN)/streamrec up $(ARGS)

## Run the test suite (uses STREAMREC_TEST_REDIS_URL / STREAMREC_TEST_DATABASE_URL when set).
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench-ingest: install
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf var .pytest_cache .ruff_cache
