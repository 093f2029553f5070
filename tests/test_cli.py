"""The commands' shared plumbing (`mobilenet_jax.cli`): a user's mistake is
one line and exit status 2 in every command, a bug keeps its traceback and
exits 1, and library INFO logs stay off at the default verbosity."""

import logging
import os
import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_module, tiny_overrides
from mobilenet_jax import cli

# Runs a command with a bug planted in MobileNetV1's block: a jnp.split of
# its input into 3 (8 channels at alpha 0.25: not an equal division), the
# ValueError a researcher's edit trips. argv: module, then its flags.
BROKEN_BLOCK = '''
import runpy, sys
import jax.numpy as jnp
from mobilenet_jax import blocks
call = blocks.DepthwiseSeparable.__call__
def broken(self, x, *args, **kwargs):
  jnp.split(x, 3, axis=-1)
  return call(self, x, *args, **kwargs)
blocks.DepthwiseSeparable.__call__ = broken
module = sys.argv.pop(1)
runpy.run_module(module, run_name='__main__', alter_sys=True)
'''
SPLIT_ERROR = 'array split does not result in an equal division'


def _run_broken(module, *args):
  return subprocess.run(
      [sys.executable, '-c', BROKEN_BLOCK, module, *args], cwd=REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
      text=True, timeout=600)


def _assert_traceback(result):
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback (most recent call last)' in result.stderr
  assert f'ValueError: {SPLIT_ERROR}' in result.stderr, result.stderr[-3000:]
  assert not re.search(r'^error: ', result.stderr, re.M)


def test_a_bug_in_training_keeps_its_traceback_and_exits_1(data_dir,
                                                           tmp_path):
  workdir = tmp_path / 'w'
  result = _run_broken(
      'mobilenet_jax.main', '--config=configs/default.py',
      f'--workdir={workdir}', '--config.num_train_steps=2',
      *[f'--config.{k}={v}' for k, v in tiny_overrides(data_dir).items()])
  _assert_traceback(result)


def test_a_bug_in_a_model_keeps_its_traceback_in_profile():
  _assert_traceback(_run_broken('mobilenet_jax.profile',
                                '--model=mobilenet_v1', '--alpha=0.25'))


@pytest.mark.parametrize('module, args, expected', [
    ('mobilenet_jax.profile', ['--model=mobilenet_v1', '--alpha=0'],
     'alpha must be > 0, got 0.0'),
    ('mobilenet_jax.profile', ['--model=mobilenet_v1', '--alhpa=1'],
     "Unknown command line flag 'alhpa'"),
    pytest.param('mobilenet_jax.sweep', ['summarize', '{tmp}/none'],
                 "sweep directory not found: '{tmp}/none'",
                 marks=pytest.mark.slow),
    pytest.param('mobilenet_jax.sweep', ['launch'],
                 'usage: python -m mobilenet_jax.sweep',
                 marks=pytest.mark.slow),
    pytest.param('mobilenet_jax.evaluate', ['--workdir={tmp}/none'],
                 "workdir has no config.json: '{tmp}/none' is not a training "
                 'workdir', marks=pytest.mark.slow),
    pytest.param('mobilenet_jax.evaluate', ['--workdir={tmp}', 'extra'],
                 "unexpected arguments: ['extra']", marks=pytest.mark.slow),
    pytest.param('mobilenet_jax.export', ['--source={tmp}',
                                          '--output={tmp}/m.txt'],
                 "output: must end in .tflite, got '{tmp}/m.txt'",
                 marks=pytest.mark.slow),
    pytest.param('mobilenet_jax.convert', ['--keras_model={tmp}/m.keras',
                                           '--model=mobilenet_v9',
                                           '--output={tmp}/out'],
                 "model must be one of ['mobilenet_v1', ",
                 marks=pytest.mark.slow),
    pytest.param('mobilenet_jax.bench', ['--model=mobilenet_v1', '--steps=2'],
                 'steps must be >= 5 for a median and spread, got 2',
                 marks=pytest.mark.slow),
])
def test_a_users_mistake_is_one_line_with_status_2(module, args, expected,
                                                   tmp_path):
  result = run_module(module, *[a.format(tmp=tmp_path) for a in args])
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.count('\n') == 1, result.stderr  # no traceback, no log
  assert result.stderr.startswith('error: ' + expected.format(tmp=tmp_path))


def test_tpu_compile_without_libtpu_is_one_line_with_status_2():
  if importlib.util.find_spec('libtpu'):
    pytest.skip('libtpu is installed')
  result = run_module('mobilenet_jax.tpu_compile',
                      '--config=configs/default.py', '--topology=v5e:2x2')
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.count('\n') == 1, result.stderr
  assert result.stderr.startswith('error: libtpu is not installed')


@pytest.mark.parametrize('arg, expected', [
    ('alpah=0.5', "no config argument 'alpah'; did you mean 'alpha'? allowed: "
     'alpha, batch_size, epochs, model, rho, t'),
    ('alpha=wide', "config argument alpha must be a float, got 'wide'"),
    ('alpha', "config argument 'alpha' must be key=value"),
])
def test_config_file_argument_errors_are_one_short_line(arg, expected,
                                                        tmp_path):
  result = run_module('mobilenet_jax.main',
                      f'--config=configs/imagenet_mobilenet_v2.py:{arg}',
                      f'--workdir={tmp_path / "w"}')
  assert result.returncode == 2
  assert result.stderr == (f'error: flag --config=configs/'
                           f'imagenet_mobilenet_v2.py:{arg}: {expected}\n')
  assert not (tmp_path / 'w').exists()


def _record(path, level, message):
  return logging.LogRecord('absl', level, path, 1, message, None, None)


def test_library_info_and_harmless_warnings_are_dropped_ours_kept():
  orbax = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint',
                       'checkpoint_manager.py')
  ours = os.path.join(cli.OUR_CODE, 'train.py')
  assert cli._keep_record(_record(ours, logging.INFO, 'step 2/6'))
  assert not cli._keep_record(_record(orbax, logging.INFO, 'Saving'))
  assert not cli._keep_record(_record(
      orbax, logging.WARNING, 'Given directory is read only=%s'))
  assert cli._keep_record(_record(orbax, logging.WARNING, 'Disk almost full'))
  assert cli._keep_record(_record(orbax, logging.ERROR, 'Write failed'))


@pytest.mark.parametrize('argv, expected', [
    (['main.py'], 0), (['m', '--verbosity=1'], 1), (['m', '-v', '2'], 2),
    (['m', '--verbosity', '1', '--x=1'], 1), (['m', '-v=-1'], -1)])
def test_verbosity_is_read_from_the_raw_command_line(argv, expected):
  assert cli._verbosity_in_argv(argv) == expected


LOG_LINE = re.compile(r'^[IWEF]\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] ')


def _log_sources(stderr):
  """The files that logged each stderr line; '?' for a line that is no
  absl log line (a banner, a traceback)."""
  return [m[1] if (m := LOG_LINE.match(line)) else '?'
          for line in stderr.splitlines()]


@pytest.mark.slow
def test_library_info_logs_only_with_verbosity_1(data_dir, tmp_path):
  workdir = tmp_path / 'w'
  result = run_module(
      'mobilenet_jax.main', '--config=configs/default.py',
      f'--workdir={workdir}', '--config.num_train_steps=2',
      *[f'--config.{k}={v}' for k, v in tiny_overrides(data_dir).items()])
  assert result.returncode == 0, result.stderr[-3000:]
  # Our progress and results only: no tfds/optax/orbax INFO, no TF banner.
  assert set(_log_sources(result.stderr)) <= {'train.py', 'writers.py'}, (
      result.stderr)
  assert re.search(r'Final evaluation written to .*step_2\.json$',
                   result.stderr.splitlines()[-1])

  quiet = run_module('mobilenet_jax.evaluate', f'--workdir={workdir}',
                     '--split=test[:50%]')
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert set(_log_sources(quiet.stderr)) == {'evaluation.py'}, quiet.stderr
  # Asked for: the libraries' INFO lines (tfds here) and the TF banner.
  loud = run_module('mobilenet_jax.evaluate', f'--workdir={workdir}',
                    '--split=test[:50%]', '--force', '--verbosity=1')
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert 'dataset_info.py' in _log_sources(loud.stderr), loud.stderr
  assert 'oneDNN' in loud.stderr


def test_an_interrupt_that_stops_a_command_is_one_line_status_130(tmp_path):
  # What a second Ctrl-C raises in training (train._Preemption).
  interrupted = '''
import runpy, sys
from mobilenet_jax import train
def interrupted(config, workdir):
  raise KeyboardInterrupt('SIGINT again: exiting; the checkpoint of step 4 '
                          'is saved')
train.train_and_evaluate = interrupted
runpy.run_module('mobilenet_jax.main', run_name='__main__', alter_sys=True)
'''
  result = subprocess.run(
      [sys.executable, '-c', interrupted, '--config=configs/default.py',
       f'--workdir={tmp_path / "w"}'], cwd=REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 130, result.stderr[-3000:]
  # (Importing train first shows TF's banner: this test's doing.)
  assert result.stderr.endswith('\ninterrupted: SIGINT again: exiting; the '
                                'checkpoint of step 4 is saved\n')
  assert 'Traceback' not in result.stderr
