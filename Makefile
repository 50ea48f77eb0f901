# Two commands: `make demo` and `make test`. Both create or refresh the virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fourcast-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint format bench bench-full venv clean cylc-env cycle cycle-tiny rsync

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fourcast demo

test: $(STAMP) cylc-env
	CYLC_CONF_PATH=$(CURDIR)/$(CYLC_CONF) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Style and types (configured in pyproject.toml: [tool.ruff], [tool.mypy]); `.ci/run` runs `lint` first.
# `format` rewrites the tree: ruff's formatting, then the fixes ruff makes itself.
LINT_PATHS := ingest fourcast ensembles pipeline tests benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix --exit-zero $(LINT_PATHS)  # lists what is left to fix by hand

# Side-by-side benchmarks (ratios measured in one run; needs the `bench` extra: xskillscore, numba).
# `bench` takes a few minutes on 2 cores; `bench-full` runs the ERA5-like sizes (long).
BENCH_ENV := $(VENV)/.fourcast-bench-installed

$(BENCH_ENV): $(STAMP)
	$(PY) -m pip install --quiet -e ".[all,dev,bench]"
	touch $(BENCH_ENV)

bench: $(BENCH_ENV)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/run.py --out bench.json

bench-full: $(BENCH_ENV)
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/run.py --full --out bench-full.json

# Cylc 8 lives in its own venv: cylc-flow pins jinja2/protobuf versions that conflict with mlflow.
# Its jobs find `cylc` through a generated global.cylc (CYLC_CONF_PATH=$(CYLC_CONF)); nothing
# machine-specific is committed. `cylc install` needs rsync: installed here when missing and we
# are root (CI), otherwise demanded.
CYLC_VENV ?= .venv-cylc
CYLC_CONF ?= .cylc-conf
CYLC_STAMP := $(CYLC_VENV)/.cylc-installed

cylc-env: $(CYLC_STAMP) $(CYLC_CONF)/global.cylc rsync

$(CYLC_STAMP):
	test -x $(CYLC_VENV)/bin/python || $(PYTHON) -m venv $(CYLC_VENV)
	$(CYLC_VENV)/bin/pip install --quiet 'cylc-flow>=8.3,<9'
	touch $(CYLC_STAMP)

$(CYLC_CONF)/global.cylc: $(CYLC_STAMP)
	mkdir -p $(CYLC_CONF)
	printf '[platforms]\n    [[localhost]]\n        cylc path = %s\n' "$(abspath $(CYLC_VENV))/bin" > $@.tmp
	mv $@.tmp $@

rsync:
	@command -v rsync >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y rsync || (apt-get update && apt-get install -y rsync)); } \
	  || { echo "cylc install needs rsync: install it (Debian/Ubuntu: sudo apt-get install -y rsync)" >&2; exit 1; }

# A bounded hindcast of the forecast cycle (4 daily cycle points) on the demo's outputs: `make demo`
# first (store, registered fourcast-afno-tiny). `make cycle-tiny` builds its own tiny inputs instead
# (configs/cycle-tiny.yaml: synthesize, ingest, train, register) and then runs the same hindcast.
CYCLE_CONFIG ?= configs/demo.yaml
CYCLE_WORKDIR ?= demo
CYCLE_RUN = CYLC_CONF_PATH=$(CURDIR)/$(CYLC_CONF) CYLC=$(CURDIR)/$(CYLC_VENV)/bin/cylc $(VENV)/bin/fourcast

cycle: $(STAMP) cylc-env
	$(CYCLE_RUN) cycle hindcast --config $(CYCLE_CONFIG) --workdir $(CYCLE_WORKDIR)

cycle-tiny: $(STAMP) cylc-env
	test -e cycle-tiny/store.zarr/zarr.json || $(VENV)/bin/fourcast run --config configs/cycle-tiny.yaml
	$(CYCLE_RUN) cycle hindcast --config configs/cycle-tiny.yaml

clean:
	rm -rf demo cycle-tiny .pytest_cache
