# Two entry points, both from a fresh checkout: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv, installs torch first when none is installed (TORCH_SPEC; torch==2.13.0 is the CPU build
# this project is developed against), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.vlmc-installed
# timm and open_clip import torchvision, which cannot sit beside the CPU torch 2.13.0 (shared/ENVIRONMENT.md), and
# lmms-eval pulls torchvision too: their tests run in a second venv with the torch/torchvision pair they need.
VENV_EXTRAS ?= .venv-extras
EXTRAS_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS_BIN := $(VENV_EXTRAS)/bin
EXTRAS_STAMP := $(VENV_EXTRAS)/.vlmc-installed
EXTRAS_TESTS := tests/test_tap_vit.py tests/test_eval_lmms.py
# The adapter/method matrix once more against the newest transformers release the package index resolves
# (whatever pyproject's pin says): a drift in transformers' internals shows here before users meet it.
VENV_NEWEST ?= .venv-newest
NEWEST_TRANSFORMERS ?= transformers
NEWEST_BIN := $(VENV_NEWEST)/bin
NEWEST_STAMP := $(VENV_NEWEST)/.vlmc-installed
NEWEST_TESTS := $(addprefix tests/,test_adapter_llava.py test_adapter_llava_next.py test_adapter_qwen2_vl.py \
	test_adapter_qwen3_vl.py test_adapter_llava_onevision.py test_adapter_gemma3.py test_adapter_internvl.py \
	test_methods_matrix.py test_llm_pruning.py test_todre.py test_mmtok.py test_globalcom2.py test_tap.py \
	test_sparsevlm.py test_pdrop.py test_mustdrop.py test_dart.py test_visionzip.py test_vispruner.py test_cdpruner.py \
	test_divprune.py \
	test_patching.py test_errors.py test_run.py)

.PHONY: run test test-core test-extras test-newest lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[all]"
	touch $@

run: $(STAMP)
	$(BIN)/vlmc run

$(EXTRAS_BIN)/python:
	$(PYTHON) -m venv $(VENV_EXTRAS)

$(EXTRAS_STAMP): pyproject.toml | $(EXTRAS_BIN)/python
	$(EXTRAS_BIN)/pip install -q $(EXTRAS_TORCH_SPEC)
	$(EXTRAS_BIN)/pip install -q -e ".[timm,eval,lmms,dev]"
	touch $@

$(NEWEST_BIN)/python:
	$(PYTHON) -m venv $(VENV_NEWEST)

$(NEWEST_STAMP): pyproject.toml | $(NEWEST_BIN)/python
	$(NEWEST_BIN)/python -c "import torch" 2>/dev/null || $(NEWEST_BIN)/pip install -q "$(TORCH_SPEC)"
	$(NEWEST_BIN)/pip install -q -e ".[triton,eval,dev]"
	$(NEWEST_BIN)/pip install -q --upgrade "$(NEWEST_TRANSFORMERS)"
	touch $@

test: test-core test-extras test-newest

# the whole suite but the timm/open_clip and lmms-eval tests, in the default venv
test-core: $(STAMP)
	$(BIN)/python -m pytest -q $(addprefix --ignore=,$(EXTRAS_TESTS))

# TAP inserted into timm and open_clip ViTs, and the lmms-eval plugin run by lmms-eval, in the extras venv
test-extras: $(EXTRAS_STAMP)
	$(EXTRAS_BIN)/python -m pytest -q $(EXTRAS_TESTS)

# the adapter/method matrix against the newest transformers
test-newest: $(NEWEST_STAMP)
	@$(NEWEST_BIN)/python -c "import transformers; print('newest transformers here:', transformers.__version__)"
	$(NEWEST_BIN)/python -m pytest -q $(NEWEST_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check vlm_compress tests benchmarks
