# Two entry points, both from a fresh checkout: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv, installs torch first when none is installed (TORCH_SPEC; torch==2.13.0 is the CPU build
# this project is developed against), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.vlmc-installed
# timm and open_clip import torchvision, which cannot sit beside the CPU torch 2.13.0 (shared/ENVIRONMENT.md):
# their tests run in a second venv with the torch/torchvision pair they need.
VENV_TIMM ?= .venv-timm
TIMM_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TIMM_BIN := $(VENV_TIMM)/bin
TIMM_STAMP := $(VENV_TIMM)/.vlmc-installed
TIMM_TESTS := tests/test_tap_vit.py

.PHONY: run test test-core test-timm lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[all]"
	touch $@

run: $(STAMP)
	$(BIN)/vlmc run

$(TIMM_BIN)/python:
	$(PYTHON) -m venv $(VENV_TIMM)

$(TIMM_STAMP): pyproject.toml | $(TIMM_BIN)/python
	$(TIMM_BIN)/pip install -q $(TIMM_TORCH_SPEC)
	$(TIMM_BIN)/pip install -q -e ".[timm,dev]"
	touch $@

test: test-core test-timm

# the whole suite but the timm/open_clip tests, in the default venv
test-core: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=$(TIMM_TESTS)

# TAP inserted into timm and open_clip ViTs, in the timm venv
test-timm: $(TIMM_STAMP)
	$(TIMM_BIN)/python -m pytest -q $(TIMM_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check vlm_compress tests benchmarks
