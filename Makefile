# `make run` and `make test` set everything up on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/quickstart.yaml

.PHONY: run test lint bench bench-generate bench-train bench-topk clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/transferset run $(CONFIG)

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests

# ruff, then the floors' import contracts (pyproject.toml [tool.importlinter]; also run by the tests).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Benchmarks print their figures and end with one JSON line; figures go to docs/BENCHMARKS.md.
bench: bench-generate bench-train bench-topk

bench-generate: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/generate.py

bench-train: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/train.py

bench-topk: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/topk_kl.py

clean:
	rm -rf runs .pytest_cache
