"""configs/ is a folder of files loaded by path, not an installed package:
a wheel has no top-level `configs`, no library module imports one, and a
config file that uses its siblings loads by path from any directory."""

import ast
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Made unimportable in a subprocess: what a user's machine without the
# repository on sys.path sees.
NO_CONFIGS = "import sys; sys.modules['configs'] = None; "


def _run(code: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('PYTHONPATH', None)
  return subprocess.run([sys.executable, '-c', NO_CONFIGS + code, *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def test_no_library_module_imports_configs():
  for path in glob.glob(os.path.join(REPO, 'mobilenet_jax', '**', '*.py'),
                        recursive=True):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if isinstance(node, ast.ImportFrom)
               else [])
      assert not any(n.split('.')[0] == 'configs' for n in names), path


@pytest.mark.multiprocess
def test_wheel_has_no_top_level_configs(tmp_path):
  source = tmp_path / 'source'
  source.mkdir()
  for name in ('pyproject.toml', 'mobilenet_jax', 'configs'):
    copy = shutil.copytree if os.path.isdir(os.path.join(REPO, name)) else (
        shutil.copy)
    copy(os.path.join(REPO, name), source / name)
  subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
       '--no-build-isolation', '-w', str(tmp_path / 'wheel'), str(source)],
      check=True, capture_output=True, timeout=300)
  (wheel,) = glob.glob(str(tmp_path / 'wheel' / '*.whl'))
  top = {name.split('/')[0] for name in zipfile.ZipFile(wheel).namelist()}
  assert 'mobilenet_jax' in top and 'configs' not in top, top


@pytest.mark.multiprocess
def test_config_files_load_by_path_from_another_directory(tmp_path):
  # A bad override stops main at its config check, after loading the file
  # (V1 -> V2 -> default, config_args; tpu.py -> V3) and before training.
  main = ("import runpy; runpy.run_module('mobilenet_jax.main', "
          "run_name='__main__')")
  for config in ('imagenet_mobilenet_v1.py:alpha=0.5',
                 'tpu.py:recipe=imagenet_mobilenet_v3_large,alpha=0.75'):
    result = _run(main, f'--config={REPO}/configs/{config}',
                  f'--workdir={tmp_path}/run', '--config.optim.name=bogus',
                  cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --config: optim.name must be one of ['adamw', 'rmsprop_tf', "
        "'sgd'], got 'bogus'")
  assert not (tmp_path / 'run').exists()


@pytest.mark.multiprocess
def test_bench_and_litert_import_without_configs(tmp_path):
  result = _run('from mobilenet_jax import bench, litert, export, evaluate',
                cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
