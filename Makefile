# Fresh machine: `make run` (set up + main job), `make test` (set up + tests),
# `make test-fast` (set up + the tests not marked slow or multiprocess).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
PYTEST_ARGS ?=

.PHONY: setup run test test-fast

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m mobilenet_jax.main --config=configs/default.py --workdir=$(WORKDIR)
	@echo "checkpoints: $(WORKDIR)/checkpoints   evaluation: $(WORKDIR)/eval/"
	@ls $(WORKDIR)/eval

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m 'not slow and not multiprocess' $(PYTEST_ARGS)
