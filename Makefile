# Two commands: `make demo` and `make test`. Both create or refresh the virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fourcast-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench bench-full venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fourcast demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Side-by-side benchmarks (ratios measured in one run; needs the `bench` extra: xskillscore, numba).
# `bench` takes a few minutes on 2 cores; `bench-full` runs the ERA5-like sizes (long).
BENCH_ENV := $(VENV)/.fourcast-bench-installed

$(BENCH_ENV): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_ENV)

bench: $(BENCH_ENV)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/run.py --out bench.json

bench-full: $(BENCH_ENV)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/run.py --full --out bench-full.json

clean:
	rm -rf demo .pytest_cache
