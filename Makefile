# Every target that runs code depends on .venv, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test lint acdc promise12 gradients benchmark clean

$(VENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,promise12]'
	touch $(VENV)

test: $(VENV)
	$(PY) -m pytest -q

lint: $(VENV)
	$(PY) -m ruff check segmime_jax experiments tests

acdc: $(VENV)
	$(PY) -m experiments.acdc

promise12: $(VENV)
	$(PY) -m experiments.promise12

gradients: $(VENV)
	$(PY) -m experiments.gradients

benchmark: $(VENV)
	$(PY) -m experiments.benchmark

clean:
	rm -rf $(VENV) .cache results
