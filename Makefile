# Fresh machine: `make run` (set up + main job), `make test` (set up + tests),
# `make test-fast` (set up + the tests not marked slow or multiprocess).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# libtpu (the `tpu` extra) lives in a side venv that sees .venv's packages
# through a .pth file: in .venv itself it would make JAX treat this machine
# as a TPU host. The TPU compile tests run `tpu_compile` with its python.
TPU_VENV ?= .venv-tpu
TPU_PY := $(TPU_VENV)/bin/python
WORKDIR ?= runs/default
PYTEST_ARGS ?=
# pytest-xdist workers; the tests marked multiprocess share one of them.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist=loadgroup

.PHONY: setup setup-tpu run test test-fast

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

setup: $(VENV)/.installed

$(TPU_VENV)/.installed: $(VENV)/.installed
	$(PY) -m venv $(TPU_VENV)
	$(TPU_PY) -c "import sys, sysconfig; open(sysconfig.get_paths()['purelib'] + '/mobilenet_jax_venv.pth', 'w').write('import site; site.addsitedir(%r)\\n' % sys.argv[1])" \
	    "$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
	$(TPU_PY) -m pip install -q -c requirements.lock "$$($(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['tpu'])")"
	$(TPU_PY) -c 'import libtpu, jax, mobilenet_jax'
	touch $@

setup-tpu: $(TPU_VENV)/.installed

run: setup
	$(PY) -m mobilenet_jax.main --config=configs/default.py --workdir=$(WORKDIR)
	@echo "checkpoints: $(WORKDIR)/checkpoints   evaluation: $(WORKDIR)/eval/"
	@ls $(WORKDIR)/eval

test: setup setup-tpu
	MOBILENET_JAX_TPU_PYTHON=$(abspath $(TPU_PY)) $(PYTEST) $(PYTEST_ARGS)

test-fast: setup
	$(PYTEST) -m 'not slow and not multiprocess' $(PYTEST_ARGS)
