"""Controlling a run: Ctrl-C saves and exits like SIGTERM (twice aborts), a
warm-up longer than the run is clamped, throughput leaves out the compiling
first step, and flag or config errors are one line with exit status 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mobilenet_jax import checkpoint
from mobilenet_jax import train

from conftest import REPO, main_command, run_module, tiny_config, tiny_overrides


def test_ctrl_c_requests_a_save_and_a_second_one_aborts():
  preemption = train._Preemption()  # pylint: disable=protected-access
  try:
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested
    with pytest.raises(KeyboardInterrupt, match='aborted without saving'):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    preemption.restore()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_after_the_save_says_it_is_saved():
  preemption = train._Preemption()  # pylint: disable=protected-access
  try:
    os.kill(os.getpid(), signal.SIGINT)
    preemption.saved_step = 40  # what the loop sets once committed
    with pytest.raises(KeyboardInterrupt) as e:
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    preemption.restore()
  assert str(e.value) == ('SIGINT again: exiting; the checkpoint of step 40 '
                          'is saved')


@pytest.mark.slow
def test_ctrl_c_saves_at_the_next_step_and_exits_0(data_dir, tmp_path):
  overrides = tiny_overrides(data_dir, num_train_steps=2000,
                             checkpoint_every_steps=5000, log_every_steps=20)
  process = subprocess.Popen(main_command(overrides, tmp_path), cwd=REPO,
                             env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count('\n') >= 2):
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.2)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert 'SIGINT: saving a checkpoint' in stderr
  saved = checkpoint.create_manager(str(tmp_path),
                                    read_only=True).latest_step()
  assert 40 <= saved < 2000
  assert stderr.rstrip().endswith(
      f'stopped at step {saved}: its checkpoint is saved '
      f'({checkpoint.checkpoint_path(str(tmp_path), saved)}); the same '
      'command resumes')


def test_warmup_longer_than_the_run_is_clamped_to_a_tenth(data_dir):
  from mobilenet_jax import data  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir, num_train_steps=20,
                       **{'optim.warmup_steps': 50})
  resolved = train.resolve_config(config, data.get_dataset_info(config.data))
  assert resolved.optim.warmup_steps == 2
  assert config.optim.warmup_steps == 50  # the caller's config is unchanged
  shorter = tiny_config(data_dir, num_train_steps=20,
                        **{'optim.warmup_steps': 19})
  assert train.resolve_config(
      shorter, data.get_dataset_info(config.data)).optim.warmup_steps == 19


@pytest.mark.slow
def test_throughput_leaves_out_the_compiling_first_step(data_dir, tmp_path,
                                                         monkeypatch):
  lines = []
  monkeypatch.setattr(train.writers, 'console_line',
                      lambda *args, **kwargs: lines.append((args, kwargs)))
  config = tiny_config(data_dir, num_train_steps=4, log_every_steps=1,
                       checkpoint_every_steps=0)
  train.train_and_evaluate(config, str(tmp_path))
  timings = [kwargs for _, kwargs in lines]
  assert timings[0] == {}  # step 1: only the compiling step has run
  for timing in timings[1:]:
    assert timing['img_per_sec'] > 0 and timing['seconds_left'] >= 0
  assert timings[-1]['seconds_left'] == 0
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_records = [r for r in records if r['split'] == 'train']
  assert 'img_per_sec' not in train_records[0]
  assert all('img_per_sec' in r for r in train_records[1:])


@pytest.mark.parametrize('args, expected', [
    (['--config.model.alhpa=0.3'],
     'error: --config: no field "alhpa"; did you mean "alpha"?'),
    (['--config=configs/does_not_exist.py'],
     "error: --config: [Errno 2] No such file or directory: "
     "'configs/does_not_exist.py'"),
    (['--config.model.alpha=wide'],
     "error: flag --config.model.alpha=wide: could not convert string to "
     "float: 'wide'"),
])
def test_flag_and_config_errors_are_one_line_with_status_2(args, expected,
                                                            tmp_path):
  result = run_module('mobilenet_jax.main', '--config=configs/default.py',
                      f'--workdir={tmp_path / "w"}', *args)
  assert result.returncode == 2
  assert result.stderr.strip() == expected  # no traceback, no log lines
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('arg, expected', [
    ('optim.name=adamx', "optim.name must be one of ['adamw', 'rmsprop_tf', "
     "'sgd'], got 'adamx'"),
    ('optim.schedule=linear', "optim.schedule must be one of ['constant', "
     "'cosine', 'exponential'], got 'linear'"),
    ('model.name=mobilenet_v9', "model.name must be one of ['mobilenet_v1', "),
    ('model.ops=gpu', "model.ops must be one of ['auto', 'reference', 'cpu'], "
     "got 'gpu'"),
    ('model.dtype=bf16', "model.dtype must be one of ['float32', 'bfloat16', "
     "'float16'], got 'bf16'"),
    ('model.padding=SAME', "model.padding must be one of ['same', "
     "'symmetric'], got 'SAME'"),
    ('model.bn_epsilon=0', 'model.bn_epsilon must be > 0, got 0.0'),
    ('model.expansion=2.0', 'model.expansion must be None for mobilenet_v1'),
    ('model.alpha=0', 'model.alpha must be > 0, got 0.0'),
    ('model.dropout_rate=1.0', 'model.dropout_rate must be in [0, 1), got 1.0'),
    ('optim.label_smoothing=1.5', 'optim.label_smoothing must be in [0, 1)'),
    ('optim.warmup_steps=-1', 'optim.warmup_steps must be an int >= 0'),
    ('data.rho=0.1', 'data.rho * data.base_resolution must be >= 32'),
    ('batch_size=0', 'batch_size must be an int > 0, got 0'),
    ('log_every_steps=-1', 'log_every_steps must be an int >= 0'),
    ('freeze_backbone=true', 'freeze_backbone needs init_from'),
    ('init_head=true', 'init_head needs init_from'),
])
def test_config_values_are_checked_before_the_heavy_imports(arg, expected,
                                                            tmp_path):
  # Against an existing workdir, which must keep its bytes. (~2 s each here,
  # against 8-10 s when the values were first checked after the imports.)
  workdir = tmp_path / 'w'
  (workdir / 'checkpoints' / '5').mkdir(parents=True)
  (workdir / 'config.json').write_text('{"mine": 1}\n')
  (workdir / 'metrics.jsonl').write_text('{"step": 5}\n')
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  result = run_module('mobilenet_jax.main', '--config=configs/default.py',
                      f'--workdir={workdir}', f'--config.{arg}')
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1  # one line, no log lines
  assert result.stderr.startswith(f'error: --config: {expected}'), (
      result.stderr)
  assert {p: p.read_bytes() for p in workdir.rglob('*')
          if p.is_file()} == before
  assert sorted(workdir.rglob('*')) == sorted(
      [*before, workdir / 'checkpoints', workdir / 'checkpoints' / '5'])


def test_the_config_check_imports_no_library_and_holds_the_only_lists():
  result = subprocess.run(
      [sys.executable, '-c',
       'import sys; from mobilenet_jax import config_check; '
       'print(sorted(m for m in ("jax", "tensorflow", "optax", "flax", '
       '"numpy") if m in sys.modules))'],
      cwd=REPO, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == '[]'
  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import config_check, models, ops, optim, specs
  assert optim.OPTIMIZERS is config_check.OPTIMIZERS
  assert optim.SCHEDULES is config_check.SCHEDULES
  assert optim.check_optim_config is config_check.check_optim_config
  assert ops.NAMES is config_check.OP_SET_NAMES
  assert set(ops.NAMES) == {'auto', *ops.OP_SETS}
  assert models.REGISTRY is specs.ARCHITECTURES
  assert config_check.MODEL_NAMES == tuple(sorted(models.REGISTRY))
  assert models.MIN_RESOLUTION == config_check.MIN_RESOLUTION
  from mobilenet_jax import layers
  assert layers.PADDINGS is config_check.PADDINGS


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  workdir = tmp_path / 'notes.txt'
  workdir.write_text('mine')
  result = run_module('mobilenet_jax.main', '--config=configs/default.py',
                      f'--workdir={workdir}')
  assert result.returncode == 2
  assert result.stderr.strip().endswith('is a file, not a folder')
  assert workdir.read_text() == 'mine'
