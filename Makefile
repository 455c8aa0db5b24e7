# Every target that runs code depends on .venv, so each works on a fresh clone (device-check excepted: it uses
# the GPU machine's own python and jax).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test test-all lint format acdc promise12 gradients benchmark figures device-check clean

$(VENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,promise12]'
	touch $(VENV)

SOURCES := segmime_jax experiments tests

# The README's test command: style first, then every test but those marked slow (whole models and experiments),
# one worker per CPU core (pytest-xdist; a file's tests stay on one worker, sharing its module fixtures).
PYTEST_PARALLEL ?= -n auto --dist loadfile
test: lint
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

test-all: lint
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

lint: $(VENV)
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)

format: $(VENV)
	$(PY) -m ruff check --fix $(SOURCES)
	$(PY) -m ruff format $(SOURCES)

# Options go through ARGS, e.g. make acdc ARGS="--seeds 3 --epochs 30"
acdc: $(VENV)
	$(PY) -m experiments.acdc $(ARGS)

promise12: $(VENV)
	$(PY) -m experiments.promise12 $(ARGS)

gradients: $(VENV)
	$(PY) -m experiments.gradients $(ARGS)

benchmark: $(VENV)
	$(PY) -m experiments.benchmark $(ARGS)

# The README's two figures: Figure 1 of the gradient study and Figure 2 of the ACDC demo (about 12 minutes on a
# 2-core CPU; a finished demo in results/acdc/demo is reused).
figures: $(VENV)
	$(PY) -m experiments.gradients --out results/gradients
	cp results/gradients/figure1.png docs/images/figure1.png
	$(PY) -m experiments.acdc --out results/acdc/demo
	cp results/acdc/demo/fig2.png docs/images/fig2_acdc_demo.png

# The GPU check (docs/benchmark.md, "Checking a GPU") with the machine's own python3 and its jax (no .venv: it needs only
# jax, flax, optax, orbax and chex). Options go through ARGS, e.g. make device-check ARGS="--time-budget-s 300"
DEVICE_OUT ?= results/device-out
REFERENCE ?= tests/fixtures
device-check:
	$(PYTHON) -m experiments.device_check --out $(DEVICE_OUT) --reference $(REFERENCE) $(ARGS)

clean:
	rm -rf $(VENV) .cache results
