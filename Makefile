# Two entry points, both from a fresh checkout: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv, installs torch first when none is installed (TORCH_SPEC; torch==2.13.0 is the CPU build
# this project is developed against), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.vlmc-installed

.PHONY: run test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[all]"
	touch $@

run: $(STAMP)
	$(BIN)/vlmc run

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check vlm_compress tests benchmarks
