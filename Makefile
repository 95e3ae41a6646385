# `make run` and `make test` set everything up on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/quickstart.yaml

.PHONY: run test test-fast test-e2e lint docs bench bench-generate bench-train bench-topk bench-student bench-storage bench-peers \
	bench-real-split study study-views clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The project's modules byte-compiled once (compileall skips those up to date): a machine that sets
# PYTHONDONTWRITEBYTECODE (this one does) would otherwise compile them again in every process —
# each Ray worker, each command a test starts — about 0.3 CPU-seconds a process.
COMPILE := $(BIN)/python -m compileall -q core stages student pipeline bench tests > /dev/null

run: $(STAMP)
	$(COMPILE)
	RAY_AUTH_MODE=disabled $(BIN)/transferset run $(CONFIG)

# Two pytest workers, a test file at a time (its module fixtures are built once), the files of the
# slowest tiers first (tests/conftest.py). TEST_WORKERS=0 runs every test in this process.
TEST_WORKERS ?= 2
PYTEST := RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Every tier (docs/TESTING.md): what CI runs (.ci/run).
test: $(STAMP)
	$(COMPILE)
	$(PYTEST) tests

# The fast tier: unit and value tests, bad input in process, the one shared finished job.
test-fast: $(STAMP)
	$(COMPILE)
	$(PYTEST) tests -m "not e2e and not cluster and not concurrency"

# The other tiers: the installed command as a process, the multi-node cluster, the concurrency suite.
test-e2e: $(STAMP)
	$(COMPILE)
	$(PYTEST) tests -m "e2e or cluster or concurrency"

# docs/CONFIG.md's key reference, generated from the config models (a test keeps it current).
docs: $(STAMP)
	$(BIN)/python -m pipeline.config_reference docs/CONFIG.md

# ruff, then the floors' import contracts (pyproject.toml [tool.importlinter]; also run by the tests).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Benchmarks print their figures and end with one JSON line; figures go to docs/BENCHMARKS.md.
bench: bench-generate bench-train bench-topk bench-student bench-storage bench-real-split

bench-generate: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/generate.py

bench-train: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/train.py

bench-topk: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/topk_kl.py

bench-student: $(STAMP)
	$(BIN)/python bench/student_speed.py

# Bytes per stored view of replay and packed sets (>= 100 000 views each) beside the same sets as
# pixels (~20 min), then at 1 000 classes with KL and students (~35 min).
bench-storage: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/storage.py
	RAY_AUTH_MODE=disabled $(BIN)/python bench/storage_1000.py

# The stream beside webdataset's recipe and mosaicml-streaming on one 80 000-view set (~15 min; makes the set
# in /tmp/bench-peers once). mosaicml-streaming is installed without its declared dependencies (constraints.txt).
$(VENV)/.bench-installed: $(STAMP) constraints.txt
	$(BIN)/pip install -q -c constraints.txt brotli python-snappy zstd xxhash catalogue
	$(BIN)/pip install -q -c constraints.txt --no-deps mosaicml-streaming
	touch $@

bench-peers: $(VENV)/.bench-installed
	RAY_AUTH_MODE=disabled $(BIN)/python bench/peers.py

# The real split read from disk: peak RSS at 10x the images, ERM steps/s vs a plain torchvision loader (~25 min).
bench-real-split: $(STAMP)
	$(BIN)/python bench/real_split.py --workdir runs/bench-real-split

# The CIFAR-10 KD study of docs/RESULTS.md (hours on two cores): the example, then every study group.
study: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/transferset run examples/cifar10.yaml
	RAY_AUTH_MODE=disabled $(BIN)/python bench/kd_study.py --out runs/cifar10

# How many stored views (docs/RESULTS.md): replay sets of 2-128 views per image, XCL-Mix of the same sizes,
# the online teacher, 3 seeds; reuses the example's teachers in runs/cifar10 (~90 min on two cores).
study-views: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python bench/views.py --out runs/cifar10

clean:
	rm -rf runs .pytest_cache
