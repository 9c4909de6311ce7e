# `make test` and `make demo` work from a fresh clone; `make setup` is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Lets timm/torchvision import under the CPU-only torch, for the parity tests and benchmarks only
# (tests/refshim/sitecustomize.py). Absolute, so that subprocesses started elsewhere find it too.
REF_PATH := $(abspath tests/refshim)

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

test: setup
	HF_HUB_OFFLINE=1 PYTHONPATH=$(REF_PATH) $(BIN)/python -m pytest -q

demo: setup
	$(BIN)/effscale demo

bench: setup
	PYTHONPATH=$(REF_PATH) $(BIN)/python benchmarks/inference.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
