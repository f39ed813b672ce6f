# Quick start:  make demo   (the main job on the built-in synthetic volume)
#               make test   (the test suite, as CI runs it)
# Both create .venv on first use and install what they need. torch is pinned to the
# 2.13.0 CPU build first so that nothing pulls several GB of CUDA wheels; on a GPU
# machine install a CUDA build of torch into .venv before `make` (see README).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip show torch >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/affinity-dist sample $(DEMO)/sample.zarr --shape 128 160 160 --seed 1 --workers 2
	$(BIN)/affinity-dist run workflows/sample.toml
	$(BIN)/affinity-dist info $(DEMO)/sample.zarr

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cuda

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_storage.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_merge.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_segment.py
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache .hypothesis
