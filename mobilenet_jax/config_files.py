"""How config files (configs/*.py) use each other: by path, not by package.

`configs/` is not installed as a Python package (a top-level `configs`
would shadow a user's own), and commands load a config file by path
(`--config=/any/where/configs/x.py`, ml_collections' config_flags) from any
working directory, so a config file takes a sibling with

  default = config_files.sibling(__file__, 'default')

instead of `from configs import default`. This module imports nothing heavy:
loading a config stays free of jax, TensorFlow and optax.
"""

import importlib.util
import os
import types

# The repository's configs/ folder, beside the package in a checkout (an
# editable install, the sweep's shipped tree); an installed wheel has none.
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
# Each config module once per process, by absolute path.
_LOADED: dict[str, types.ModuleType] = {}


def repo_path(name: str) -> str:
  """The path of the repository's configs/`name`.py: the default of a
  command's config-file flag."""
  return os.path.join(CONFIGS_DIR, f'{name}.py')


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The config module `name`.py in the folder of `config_file` (the
  calling config file's `__file__`), loaded by path."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)),
                      f'{name}.py')
  if path not in _LOADED:
    if not os.path.isfile(path):
      raise ValueError(f'no config file {name!r} beside {config_file} '
                       f'({path} does not exist)')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _LOADED[path] = module
  return _LOADED[path]
