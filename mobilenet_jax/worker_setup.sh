#!/usr/bin/env bash
# Builds a TPU VM worker's Python for a shipped sweep tree (see
# mobilenet_jax/sweep_code.py): a venv at VENV with an interpreter matching
# PYTHON_SPEC (pyproject's requires-python; Ubuntu 22.04's python3 is 3.10,
# so uv fetches a standalone CPython build when none matches) and the
# project's dependencies plus its `tpu` extra, pinned by requirements.lock.
# The project itself is not installed: it runs from the shipped tree.
# Once per VENV: under flock (packed processes of one VM start together), the
# marker VENV/.installed written last; a failed set-up is redone next time.
#
# usage: worker_setup.sh TREE VENV PYTHON_SPEC
set -euo pipefail
tree=$1 venv=$2 python_spec=$3
mkdir -p "$(dirname "$venv")"
exec 9> "$venv.lock"
flock 9
if [ -f "$venv/.installed" ]; then
  exit 0
fi
# uv: on PATH, else in ~/.local/bin, else installed there with the system
# python's pip (pip install --user), else with uv's standalone installer.
uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  uv=$HOME/.local/bin/uv
  if [ ! -x "$uv" ]; then
    python3 -m pip install --quiet --user 'uv>=0.5,<1' ||
      curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
fi
rm -rf "$venv"
"$uv" venv --quiet --python "$python_spec" "$venv"
"$uv" pip install --quiet --python "$venv/bin/python" \
  -r "$tree/pyproject.toml" --extra tpu -c "$tree/requirements.lock"
touch "$venv/.installed"
