"""Test-wide settings and the helpers several test files share.

- A persistent XLA compilation cache, so the many tiny runs that build the
  same models (in this process and in subprocesses) compile each program
  once.
- `REPO` and `run_module`: run a command (`python -m MODULE ...`) from the
  repository root on the CPU backend, as a user would.
- The `data_dir` fixture: a tfds data directory with the tiny `shapes`
  dataset prepared, shared by the whole session.

Markers (registered in pyproject.toml): `slow` for tests that take more than
about 15 s here, `multiprocess` for tests that start several processes (two
jax.distributed processes, subprocesses on fake devices). `make test-fast`
leaves both out; `make test` runs everything.

- `tiny_config` (the default config shrunk to seconds), `tiny_overrides`
  and `main_command` (the same as `python -m mobilenet_jax.main` flags);
  `restored_state` (a workdir's saved TrainState).

Test files import the helpers with `from conftest import ...` (pytest puts
tests/ on sys.path).
"""

import os
import subprocess
import sys
import tempfile

import pytest

from configs import default

os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), 'mobilenet_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


def pytest_collection_modifyitems(items):
  """Under pytest-xdist (`make test`), the tests that start several
  processes run one after another on one worker (`--dist=loadgroup`), so
  that at most one of them shares the cores with the other worker's test."""
  for item in items:
    if item.get_closest_marker('multiprocess'):
      item.add_marker(pytest.mark.xdist_group('multiprocess'))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATASET = 'shapes/tiny'  # 32x32 images, 200 train / 75 test


def run_module(module, *args, env=None, cwd=REPO, timeout=600):
  """`python -m module *args` in `cwd` (default: the repository root) with
  JAX on the CPU backend; `env` (default: this process's environment) gets
  JAX_PLATFORMS=cpu added.

  Returns the `subprocess.CompletedProcess` (stdout and stderr as text),
  whatever the exit status: the caller asserts on it.
  """
  env = {**(os.environ if env is None else env), 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A tfds data_dir with TINY_DATASET prepared, for the whole session.

  Treat it as read-only; a test that needs an unprepared directory (say, to
  see who prepares it) uses its own tmp_path.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Registers the `shapes` builder.
  from mobilenet_jax import data  # pylint: disable=g-import-not-at-top,unused-import
  path = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder(TINY_DATASET, data_dir=path).download_and_prepare()
  return path


def tiny_config(data_dir, **overrides):
  """The default config shrunk to seconds: shapes/tiny at 32 px, alpha 0.25."""
  config = default.get_config()
  config.model.alpha = 0.25
  config.model.dropout_rate = 0.0
  config.data.dataset = 'shapes/tiny'
  config.data.data_dir = data_dir
  config.data.base_resolution = 32
  config.batch_size = 8
  config.num_train_steps = 6
  config.optim.warmup_steps = 1
  config.optim.schedule = 'constant'
  config.optim.learning_rate = 0.005
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def main_command(config_overrides, workdir, *extra):
  """`python -m mobilenet_jax.main` on configs/default.py with overrides."""
  return [sys.executable, '-m', 'mobilenet_jax.main',
          '--config=configs/default.py', f'--workdir={workdir}',
          *[f'--config.{k}={v}' for k, v in config_overrides.items()], *extra]


def tiny_overrides(data_dir, **extra):
  return {'model.alpha': 0.25, 'model.dropout_rate': 0.0,
          'data.dataset': 'shapes/tiny', 'data.data_dir': data_dir,
          'data.base_resolution': 32, 'batch_size': 8,
          'optim.schedule': 'constant', 'optim.warmup_steps': 1,
          'optim.learning_rate': 0.005, 'log_every_steps': 2, **extra}


def restored_state(workdir, step=None):
  """The TrainState saved in `workdir` (latest step by default)."""
  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import checkpoint, models, parallel
  from mobilenet_jax import state as state_lib
  config = checkpoint.load_config(workdir)
  model = state_lib.model_from_config(config.model, config.num_classes)
  resolution = models.input_resolution(config.data.rho,
                                       config.data.base_resolution)
  abstract = state_lib.abstract_train_state(config, model, resolution,
                                            parallel.create_mesh())
  manager = checkpoint.create_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  return checkpoint.restore(manager, step, abstract)
