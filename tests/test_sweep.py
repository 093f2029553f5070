"""Sweeps: expansion, naming, commands, launching real tiny runs, summaries."""

import csv
import dataclasses
import functools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

import jax
import pytest

from configs import default
from configs import imagenet_mobilenet_v1
from configs import imagenet_mobilenet_v2
from configs import imagenet_mobilenet_v3_large
from configs import imagenet_mobilenet_v4_conv_medium
from mobilenet_jax import checkpoint
from mobilenet_jax import hyper
from mobilenet_jax import models
from mobilenet_jax import pretrained
from mobilenet_jax import sweep
from mobilenet_jax import sweep_code
from mobilenet_jax import sweep_pool
from mobilenet_jax import sweep_runs
from mobilenet_jax import sweep_summary
from conftest import run_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = os.path.join(REPO, 'configs', 'sweeps')


def write_sweep_file(path, body):
  path.write_text(body)
  return str(path)


# Expansion.


def test_product_zip_and_fixed_expand_in_order():
  h = hyper
  runs = h.product([
      h.fixed('model.name', 'mobilenet_v1'),
      h.sweep('model.alpha', [1.0, 0.5]),
      h.zipit([h.sweep('data.rho', [1.0, 0.5]),
               h.sweep('batch_size', [64, 32])]),
  ])
  assert runs == [
      {'model.name': 'mobilenet_v1', 'model.alpha': 1.0, 'data.rho': 1.0,
       'batch_size': 64},
      {'model.name': 'mobilenet_v1', 'model.alpha': 1.0, 'data.rho': 0.5,
       'batch_size': 32},
      {'model.name': 'mobilenet_v1', 'model.alpha': 0.5, 'data.rho': 1.0,
       'batch_size': 64},
      {'model.name': 'mobilenet_v1', 'model.alpha': 0.5, 'data.rho': 0.5,
       'batch_size': 32},
  ]
  # Key order within a run follows the factors (the last varies fastest).
  assert list(runs[0]) == ['model.name', 'model.alpha', 'data.rho',
                           'batch_size']


@pytest.mark.parametrize('make', [
    lambda h: h.zipit([h.sweep('a', [1, 2]), h.sweep('b', [1, 2, 3])]),
    lambda h: h.product([h.sweep('a', [1, 2]), h.fixed('a', 3)]),
    lambda h: h.sweep('model..alpha', [1.0]),
    lambda h: h.sweep('config-x', [1.0]),
    lambda h: h.sweep('model.alpha', []),
    lambda h: h.sweep('model.alpha', 'abc'),
    lambda h: h.sweep('model.expansion', [None, 4.0]),
    lambda h: h.fixed('model.alpha', [1.0]),
])
def test_bad_sweeps_are_value_errors(make):
  with pytest.raises(ValueError):
    make(hyper)


def test_v1_grid_is_tables_6_and_7():
  runs = sweep.load_sweep(os.path.join(SWEEPS,
                                       'v1_width_resolution.py')).runs
  assert len(runs) == 16
  assert {run['model.name'] for run in runs} == {'mobilenet_v1'}
  assert {run['model.alpha'] for run in runs} == {1.0, 0.75, 0.5, 0.25}
  # Paper tables 6/7: 224, 192, 160, 128 px at the 224 base.
  assert {models.input_resolution(run['data.rho'], 224)
          for run in runs} == {224, 192, 160, 128}
  assert len({(run['model.alpha'], run['data.rho']) for run in runs}) == 16


def test_v2_v3_and_v4_sweep_files():
  v2 = sweep.load_sweep(os.path.join(SWEEPS, 'v2_expansion.py')).runs
  assert [run['model.expansion'] for run in v2] == [1, 2, 4, 6, 8]
  v3 = sweep.load_sweep(os.path.join(SWEEPS, 'v3_width.py')).runs
  assert {(run['model.name'], run['model.alpha']) for run in v3} == {
      (name, alpha) for name in ('mobilenet_v3_large', 'mobilenet_v3_small')
      for alpha in (0.75, 1.0, 1.25)}
  assert not any('model.expansion' in run for run in v3)
  v4 = sweep.load_sweep(os.path.join(SWEEPS, 'v4_width.py')).runs
  assert {(run['model.name'], run['model.alpha']) for run in v4} == {
      (f'mobilenet_v4_conv_{size}', alpha)
      for size in ('small', 'medium', 'large') for alpha in (0.5, 0.75, 1.0)}
  assert not any('model.expansion' in run for run in v4)


@pytest.mark.parametrize('sweep_file, recipe', [
    ('v1_width_resolution.py', imagenet_mobilenet_v1.get_config),
    ('v1_separable_vs_standard.py', imagenet_mobilenet_v1.get_config),
    ('v2_expansion.py', imagenet_mobilenet_v2.get_config),
    ('v3_width.py', imagenet_mobilenet_v3_large.get_config),
    ('v4_width.py', imagenet_mobilenet_v4_conv_medium.get_config),
])
def test_sweep_files_apply_to_offline_and_imagenet_configs(sweep_file, recipe):
  runs = sweep.load_sweep(os.path.join(SWEEPS, sweep_file)).runs
  assert len(set(sweep_runs.run_names(runs))) == len(runs)
  for base in (default.get_config(), recipe()):
    for run in runs:
      config = sweep.apply_overrides(base, run)
      for key, value in run.items():
        assert functools.reduce(getattr, key.split('.'), config) == value
      models.input_resolution(config.data.rho, config.data.base_resolution)
      models.create_model(config.model.name, alpha=config.model.alpha,
                          expansion=config.model.expansion)


def test_apply_overrides_rejects_unknown_fields_and_types():
  with pytest.raises(ValueError, match='model.nope'):
    sweep.apply_overrides(default.get_config(), {'model.nope': 1})
  with pytest.raises(ValueError, match='no field'):
    sweep.apply_overrides(default.get_config(), {'seed.x': 1})
  with pytest.raises(ValueError, match='model.alpha'):
    sweep.apply_overrides(default.get_config(), {'model.alpha': 'wide'})


# Naming.


def test_run_names_from_swept_values():
  runs = hyper.product([
      hyper.fixed('model.name', 'mobilenet_v1'),
      hyper.sweep('model.alpha', [0.5, 1.0]),
      hyper.sweep('data.rho', [0.857, 1.0]),
  ])
  assert sweep_runs.run_names(runs) == [
      'alpha_0.5-rho_0.857', 'alpha_0.5-rho_1.0', 'alpha_1.0-rho_0.857',
      'alpha_1.0-rho_1.0']
  # One run: named from all its overrides.
  assert sweep_runs.run_names([{'model.alpha': 0.5}]) == ['alpha_0.5']
  assert sweep_runs.run_names([{}]) == ['run']


def test_run_names_are_filesystem_safe_and_distinct():
  runs = hyper.product([hyper.sweep('data.dataset', ['shapes/tiny', 'a b']),
                        hyper.sweep('freeze_backbone', [True, False])])
  names = sweep_runs.run_names(runs)
  assert names[0] == 'dataset_shapes_tiny-freeze_backbone_true'
  for name in names:
    assert all(c.isalnum() or c in '._+-' for c in name)
  # Two keys with the same last component: full paths.
  runs = hyper.zipit([hyper.sweep('model.dtype', ['float32', 'bfloat16']),
                      hyper.sweep('data.dtype', ['uint8', 'float32'])])
  assert sweep_runs.run_names(runs)[0] == 'model.dtype_float32-data.dtype_uint8'
  with pytest.raises(ValueError, match='named'):
    sweep_runs.run_names([{'model.alpha': 0.5}, {'model.alpha': 0.5}])


# Commands.


def test_tpu_vm_dry_run_prints_one_gcloud_command_per_run(tmp_path):
  """The shipped code's set-up on the worker, its .venv interpreter, the
  data directory every worker reads, training detached on every worker
  with its output on the worker's disk."""
  sweep_file = write_sweep_file(tmp_path / 'sweep.py', (
      'TPU = "my-tpu"\nZONE = "us-central2-b"\n\n'
      'def get_sweep(h):\n'
      '  return h.sweep("model.alpha", [0.5, 1.0])\n'))
  out = subprocess.run(
      [sys.executable, '-m', 'mobilenet_jax.sweep', 'run',
       '--config=configs/imagenet_mobilenet_v2.py:rho=0.857',
       f'--sweep={sweep_file}', '--workdir=gs://bucket/sweeps/v2/',
       '--launcher=tpu_vm', '--dry_run', '--config.num_train_steps=10',
       '--data_dir=gs://bucket/tensorflow_datasets'],
      cwd=REPO, capture_output=True, text=True, check=True).stdout
  lines = out.splitlines()
  assert len(lines) == 2
  log = '~/mobilenet_jax_logs/bucket/sweeps/v2/alpha_0.5/log.txt'
  train = ('.venv/bin/python -m mobilenet_jax.main '
           '--config=configs/imagenet_mobilenet_v2.py:rho=0.857 '
           '--workdir=gs://bucket/sweeps/v2/alpha_0.5 '
           '--config.num_train_steps=10 '
           '--config.data.data_dir=gs://bucket/tensorflow_datasets '
           '--config.model.alpha=0.5')
  code = sweep_code.pack(str(tmp_path / 'packed'))
  code = dataclasses.replace(code, archive=(
      f'gs://bucket/sweeps/v2/code/{code.code_hash}.tar.gz'))
  setup, python = sweep_code.setup_command(code)
  assert python == '.venv/bin/python'
  assert lines[0] == (
      "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b "
      "--worker=all --command=" + shlex.quote(
          "mkdir -p ~/mobilenet_jax_logs/bucket/sweeps/v2/alpha_0.5 && "
          "{ nohup setsid bash -c " + shlex.quote(
              setup + " && exec .venv/bin/python -m mobilenet_jax.sweep_pool "
              "worker gs://bucket/sweeps/v2/alpha_0.5 --epoch=1 --vm=my-tpu "
              "--group=0 --beat_seconds=150 -- " + train) +
          " >> " + log + " 2>&1 < /dev/null & }"))
  assert not (tmp_path / 'sweeps').exists()  # a dry run writes nothing
  # What the shell (and then the TPU VM's shell) would run.
  argv = shlex.split(lines[1])
  assert argv[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu',
                      '--zone=us-central2-b', '--worker=all']
  assert argv[8].startswith('--command=')
  remote = argv[8][len('--command='):]
  detached = shlex.split(remote.split(' && ', 1)[1])
  assert detached[:5] == ['{', 'nohup', 'setsid', 'bash', '-c']
  assert detached[-7:] == ['>>', log.replace('alpha_0.5', 'alpha_1.0'), '2>&1',
                           '<', '/dev/null', '&', '}']
  set_up, worker = detached[5].rsplit(' && exec ', 1)
  assert set_up == setup  # the same shipped code for every run
  worker = shlex.split(worker)
  command = worker[worker.index('--') + 1:]
  assert command == [
      '.venv/bin/python', '-m', 'mobilenet_jax.main',
      '--config=configs/imagenet_mobilenet_v2.py:rho=0.857',
      '--workdir=gs://bucket/sweeps/v2/alpha_1.0',
      '--config.num_train_steps=10',
      '--config.data.data_dir=gs://bucket/tensorflow_datasets',
      '--config.model.alpha=1.0']


def test_tpu_vm_commands_take_the_remote_python_and_need_a_data_dir(tmp_path):
  runs = hyper.sweep('model.alpha', [0.5])
  kwargs = dict(config=default.get_config(), config_arg='configs/default.py',
                workdir='gs://b/s', launcher='tpu_vm', tpus=['t'], zone='z',
                dry_run=True)
  with pytest.raises(ValueError, match='--data_dir'):
    sweep.run_sweep(runs, **kwargs)
  with pytest.raises(ValueError, match='once'):
    sweep.run_sweep(runs, data_dir='gs://b/tfds',
                    config_overrides=['--config.data.data_dir=gs://b/x'],
                    **kwargs)
  # The config's own data_dir (or a folder: dataset) is enough.
  config = default.get_config()
  config.data.data_dir = 'gs://b/tfds'
  sweep.run_sweep(runs, **{**kwargs, 'config': config})
  shipped = sweep.ship('gs://b/s', '/opt/venv/bin/python', dry_run=True)
  command = sweep.launch_command('tpu_vm', 'configs/default.py', 'gs://b/s/r',
                                 ['--config.data.data_dir=gs://b/tfds'],
                                 tpu='t', zone='z', shipped=shipped)
  remote = command[-1][len('--command='):]
  assert 'test -x /opt/venv/bin/python' in remote
  assert ('exec /opt/venv/bin/python -m mobilenet_jax.sweep_pool worker '
          in remote)
  assert '-- /opt/venv/bin/python -m mobilenet_jax.main' in remote


def test_remote_command_returns_at_once_and_the_worker_records_the_end(
    tmp_path):
  """The tpu_vm command run by a local shell, as a worker would: it returns
  while training goes on; the worker's log is on its disk, copied into the
  run directory at the end, and the exit status is in its heartbeat file."""
  home = tmp_path / 'home'
  home.mkdir()
  fake_python = tmp_path / 'python'  # training: a line, 4 s, an error
  fake_python.write_text(
      '#!/bin/sh\n'
      'if [ "$2" = mobilenet_jax.main ]; then echo "training $4"; sleep 4; '
      'echo "RuntimeError: boom"; exit 3; fi\n'
      f'exec {sys.executable} "$@"\n')
  fake_python.chmod(0o755)
  run_dir = tmp_path / 'sweep' / 'alpha_0.5'
  sweep_runs.write_json(run_dir / sweep_pool.LEASE_FILE, {'epoch': 1})
  train = sweep.train_command(str(fake_python), 'configs/default.py',
                              str(run_dir), ['--config.model.alpha=0.5'])
  remote = sweep_pool.worker_command(sweep_pool.Remote('', str(fake_python)),
                                     str(run_dir), 1, 'vm', None, 0, 0.5,
                                     train)
  env = {**os.environ, 'HOME': str(home)}
  start = time.time()
  shell = subprocess.run(['bash', '-c', remote], env=env, capture_output=True,
                         text=True, timeout=60)
  assert shell.returncode == 0, shell.stderr
  assert time.time() - start < 4  # returned before training ended
  log = home / sweep_runs.worker_log_path(str(run_dir))[2:]
  beats = []
  for _ in range(120):
    beats = [json.loads(p.read_text()) for p in run_dir.glob('heartbeat.*')]
    if beats and beats[0].get('returncode') is not None:
      break
    time.sleep(0.5)
  assert beats and beats[0]['returncode'] == 3, log.read_text()
  assert 'RuntimeError: boom' in beats[0]['tail']
  assert f'training --workdir={run_dir}' in log.read_text()
  uploaded = list(run_dir.glob('log.vm.*.txt'))
  assert len(uploaded) == 1
  assert 'RuntimeError: boom' in uploaded[0].read_text()


def test_a_worker_does_not_start_a_run_it_trains_already(tmp_path):
  proc = tmp_path / 'proc'
  for pid, argv in [(11, ['python', '-m', 'mobilenet_jax.main',
                          '--config=c.py', '--workdir=gs://b/s/r']),
                    (12, ['python', '-m', 'mobilenet_jax.main',
                          '--workdir=gs://b/s/r2']),
                    (13, ['vim', '--workdir=gs://b/s/r']),
                    (14, ['python', '-m', 'mobilenet_jax.sweep_pool',
                          'worker', 'gs://b/s/r', '--epoch=2', '--', 'x']),
                    (15, ['python', '-m', 'mobilenet_jax.sweep_pool',
                          'worker', 'gs://b/s/r2', '--epoch=1'])]:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / 'cmdline').write_bytes('\0'.join(argv).encode() + b'\0')
  (proc / 'self').mkdir()
  assert sweep_pool.training_pids('gs://b/s/r', proc=str(proc)) == [11]
  assert sweep_pool.training_pids('gs://b/s/r3', proc=str(proc)) == []
  # What `sweep_pool stop` kills: the run's trainings and workers.
  assert sweep_pool.run_pids('gs://b/s/r', proc=str(proc)) == [11, 14]


def test_format_command_quotes_for_the_shell():
  command = sweep.launch_command(
      'tpu_vm', 'configs/tpu.py:recipe=imagenet_mobilenet_v2,alpha=0.75',
      'gs://b/d/name_it\'s', ['--config.data.data_dir=gs://b/tfds dir'],
      tpu='t', zone='z', shipped=sweep.ship('gs://b/d', dry_run=True))
  assert shlex.split(sweep.format_command(command)) == command
  local = sweep.launch_command('local', 'configs/default.py', 'runs/x/a b',
                               ['--config.seed=1'])
  assert local[:3] == [sys.executable, '-m', 'mobilenet_jax.main']
  assert shlex.split(sweep.format_command(local)) == local


@pytest.mark.parametrize('kwargs, message', [
    (dict(launcher='tpu_vm', workdir='runs/x', tpus=['t'], zone='z'),
     'gs://'),
    (dict(launcher='tpu_vm', workdir='gs://b/x', tpus=None, zone='z'),
     '--tpu'),
    (dict(launcher='tpu_vm', workdir='gs://b/x', tpus=['t'], zone='z',
          chips_per_run=0), 'chips_per_run'),
    (dict(launcher='ssh', workdir='runs/x'), 'launcher'),
    (dict(launcher='local', workdir='runs/x',
          config_overrides=['--config.model.alpha=0.3']), 'model.alpha'),
])
def test_bad_launch_settings_are_value_errors(kwargs, message, capsys):
  with pytest.raises(ValueError, match=message):
    sweep.run_sweep(hyper.sweep('model.alpha', [0.5, 1.0]),
                    config=default.get_config(),
                    config_arg='configs/default.py', dry_run=True, **kwargs)
  assert not capsys.readouterr().out  # nothing printed, nothing launched


# Summaries.


def fabricate_run(sweep_dir, name, index, overrides, status, data_dir,
                  metrics=(), steps=None):
  """A run directory as the sweep and training write it: run.json, and for a
  started run config.json (resolved: with num_classes) and metrics.jsonl
  (ending in a half-written line)."""
  run_dir = sweep_dir / name
  run_dir.mkdir(parents=True)
  config = sweep.apply_overrides(default.get_config(), {
      'data.dataset': 'shapes/tiny', 'data.data_dir': data_dir,
      'data.base_resolution': 32, **overrides})
  record = dict(index=index, name=name, overrides=overrides,
                config_arg='configs/default.py', config_overrides=[],
                command='', config=config.to_dict(), status=status, error=None)
  (run_dir / sweep_runs.RUN_FILE).write_text(json.dumps(record))
  if steps is not None:
    config.num_train_steps = steps
    config.num_classes = 10
    (run_dir / 'config.json').write_text(config.to_json())
    lines = [json.dumps(dict(step=step, split='train', time=0.0, loss=1.0,
                             top1=0.5, learning_rate=0.1, img_per_sec=speed))
             for step, speed in metrics]
    (run_dir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n{"step": 3')


def test_summarize_a_partly_finished_sweep(tmp_path, data_dir):
  """Before any final evaluation: blank accuracy, running/pending status,
  the median of the logged throughputs."""
  fabricate_run(tmp_path, 'alpha_0.25', 0, {'model.alpha': 0.25}, 'running',
                data_dir, metrics=[(1, 10.0), (2, 400.0), (3, 30.0),
                                   (4, 20.0)], steps=100)
  fabricate_run(tmp_path, 'alpha_0.5', 1, {'model.alpha': 0.5}, 'pending',
                data_dir)
  rows = sweep_summary.summarize(str(tmp_path))
  assert [(r.name, r.status, r.top1, r.resolution) for r in rows] == [
      ('alpha_0.25', 'running', None, 32), ('alpha_0.5', 'pending', None, 32)]
  assert rows[0].steps == 4
  assert rows[0].img_per_sec == 25.0  # median of 10, 20, 30, 400
  assert rows[0].params > 0 and rows[0].macs > 0
  # Not started: no costs (training records the dataset's classes).
  assert (rows[1].params, rows[1].steps) == (None, None)
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['top1'] for r in table] == ['', '']
  assert [r['model.alpha'] for r in table] == ['0.25', '0.5']
  assert (tmp_path / 'tradeoff.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # The plots' title: the sweep, its dataset and steps so far.
  assert sweep_summary.plot_title('v1_width', rows) == (
      'v1_width: shapes/tiny, 4 steps')
  assert sweep_summary.written_files(rows) == [
      'results.csv', 'results.md', 'tradeoff.png']


def test_log_axis_ticks_are_plain_numbers():
  assert [sweep_summary._plain(x) for x in (1.0, 200.0, 0.5, 2e4)] == [
      '1', '200', '0.5', '20000']
  # Minor ticks: 2 and 5 times a power of ten labelled, the rest blank.
  assert [sweep_summary._plain_2_and_5(x) for x in (
      20.0, 30.0, 50.0, 0.2, 0.7, 5e6)] == ['20', '', '50', '0.2', '', '5e+06']


@pytest.mark.slow
def test_summarize_command_says_where_it_wrote(tmp_path, data_dir):
  fabricate_run(tmp_path, 'alpha_0.25', 0, {'model.alpha': 0.25}, 'running',
                data_dir, metrics=[(1, 10.0)], steps=100)
  result = run_module('mobilenet_jax.sweep', 'summarize', str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1] == (
      f'wrote results.csv, results.md, tradeoff.png in {tmp_path}')


def test_status_reports_every_run_from_the_directory_alone(tmp_path, data_dir,
                                                          capsys):
  fabricate_run(tmp_path, 'alpha_0.25', 0, {'model.alpha': 0.25}, 'finished',
                data_dir, metrics=[(100, 10.0)], steps=100)
  (tmp_path / 'alpha_0.25' / 'eval').mkdir()
  (tmp_path / 'alpha_0.25' / 'eval' / 'step_100.json').write_text(
      json.dumps({'step': 100, 'top1': 0.875, 'top5': 1.0}))
  # Another split's or an export's result is not training's final one.
  fabricate_run(tmp_path, 'alpha_0.5', 1, {'model.alpha': 0.5}, 'running',
                data_dir, metrics=[(10, 10.0), (20, 10.0)], steps=100)
  (tmp_path / 'alpha_0.5' / 'eval').mkdir()
  (tmp_path / 'alpha_0.5' / 'eval' / 'step_100.tflite_int8.json').write_text(
      '{}')
  # Stopped after a checkpoint, before metrics reached it (or none logged).
  fabricate_run(tmp_path, 'alpha_0.75', 2, {'model.alpha': 0.75}, 'pending',
                data_dir, metrics=[], steps=100)
  (tmp_path / 'alpha_0.75' / 'checkpoints' / '40').mkdir(parents=True)
  fabricate_run(tmp_path, 'alpha_1.0', 3, {'model.alpha': 1.0}, 'failed',
                data_dir, metrics=[(5, 10.0)], steps=100)
  record = json.loads((tmp_path / 'alpha_1.0' / 'run.json').read_text())
  record['error'] = 'FloatingPointError: loss is nan at step 6'
  (tmp_path / 'alpha_1.0' / 'run.json').write_text(json.dumps(record))
  fabricate_run(tmp_path, 'alpha_1.25', 4, {'model.alpha': 1.25}, 'pending',
                data_dir)
  states = sweep.print_status(str(tmp_path))
  assert [(s.name, s.status, s.step) for s in states] == [
      ('alpha_0.25', 'finished', 100), ('alpha_0.5', 'running', 20),
      ('alpha_0.75', 'running', 40), ('alpha_1.0', 'failed', 5),
      ('alpha_1.25', 'pending', None)]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == 'alpha_0.25: finished, top-1 87.5%'
  assert lines[1].startswith('alpha_0.5: running, step 20/100 (updated ')
  assert lines[2].startswith('alpha_0.75: running, step 40/100 (updated ')
  assert lines[3] == ('alpha_1.0: failed: FloatingPointError: loss is nan at '
                      'step 6')
  assert lines[4] == 'alpha_1.25: not started'
  assert lines[5] == ('5 runs: 1 finished, 2 running, 1 failed, '
                      '1 not started')
  with pytest.raises(ValueError, match='no runs'):
    sweep.print_status(str(tmp_path / 'alpha_1.25'))


# Real runs: a local sweep of a tiny training and an invalid one.

TINY = [
    '--config.data.dataset=shapes/tiny', '--config.data.base_resolution=32',
    '--config.batch_size=8', '--config.num_train_steps=2',
    '--config.optim.warmup_steps=0', '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=0', '--config.model.dropout_rate=0.0',
    '--config.model.ops=reference',  # compiles fastest on CPU
]


@pytest.fixture(scope='module')
def real_sweep(tmp_path_factory, data_dir):
  """Runs a 2-run sweep twice: V1 alpha 0.25 trains 2 steps and is exported
  (float and int8), alpha -1 fails; the second time the finished run and its
  exports are skipped."""
  root = tmp_path_factory.mktemp('sweep')
  sweep_file = write_sweep_file(root / 'tiny.py', (
      'def get_sweep(h):\n'
      '  return h.product([h.fixed("model.name", "mobilenet_v1"),\n'
      '                    h.sweep("model.alpha", [0.25, -1.0])])\n'))
  workdir = root / 'runs'
  command = [sys.executable, '-m', 'mobilenet_jax.sweep', 'run',
             '--config=configs/default.py', f'--sweep={sweep_file}',
             f'--workdir={workdir}', '--export=float,int8', *TINY,
             f'--data_dir={data_dir}']
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  log = (workdir / 'alpha_0.25' / sweep_runs.LOG_FILE).read_text()
  second = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  return workdir, first, second, log


@pytest.mark.slow
def test_failed_run_does_not_stop_the_others(real_sweep):
  workdir, first, _, _ = real_sweep
  assert first.returncode == 1, first.stdout + first.stderr
  assert '[1/2] alpha_0.25: finished after' in first.stdout
  assert '[2/2] alpha_-1.0: failed after' in first.stdout
  records = {
      name: json.loads((workdir / name / sweep_runs.RUN_FILE).read_text())
      for name in ('alpha_0.25', 'alpha_-1.0')}
  assert records['alpha_0.25']['status'] == 'finished'
  assert records['alpha_-1.0']['status'] == 'failed'
  assert 'alpha must be > 0' in records['alpha_-1.0']['error']
  assert 'alpha must be > 0' in (workdir / 'alpha_-1.0' /
                                 sweep_runs.ERROR_FILE).read_text()
  assert not (workdir / 'alpha_0.25' / sweep_runs.ERROR_FILE).exists()
  assert (workdir / 'alpha_0.25' / 'eval' / 'step_2.json').exists()
  # The resolved config the run trained with: the sweep's value, the command
  # line's overrides.
  config = checkpoint.load_config(str(workdir / 'alpha_0.25'))
  assert (config.model.name, config.model.alpha) == ('mobilenet_v1', 0.25)
  assert (config.num_train_steps, config.batch_size) == (2, 8)


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_retries_failed_ones(real_sweep):
  workdir, _, second, log = real_sweep
  assert second.returncode == 1
  assert '[1/2] alpha_0.25: finished before, skipped' in second.stdout
  assert 'alpha_0.25: float, int8 exported before, skipped' in second.stdout
  assert '[2/2] alpha_-1.0: failed after' in second.stdout
  assert (workdir / 'alpha_0.25' / sweep_runs.LOG_FILE).read_text() == log
  # The failed run was launched again: its log holds two attempts.
  failed_log = (workdir / 'alpha_-1.0' / sweep_runs.LOG_FILE).read_text()
  assert failed_log.count('$ ') == 2


def v1_macs(alpha, resolution, num_classes):
  """MobileNetV1's multiply-adds in closed form: paper table 1, equations 3
  and 4 per depthwise-separable layer, SAME padding (ceil(side / stride))."""
  width = lambda channels: int(channels * alpha)
  side = -(-resolution // 2)
  macs = side * side * 3 * 3 * 3 * width(32)
  channels = width(32)
  for out, stride in ([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
                       (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]):
    side = -(-side // stride)
    macs += side * side * channels * (9 + width(out))
    channels = width(out)
  return macs + channels * num_classes


def test_v1_closed_form_is_the_papers():
  assert v1_macs(1.0, 224, 1000) == pytest.approx(569e6, rel=0.001)
  assert v1_macs(0.25, 224, 1000) == pytest.approx(41e6, rel=0.01)


@pytest.mark.slow
def test_summarize_real_runs(real_sweep):
  workdir, _, _, _ = real_sweep
  rows = {row.name: row for row in sweep_summary.summarize(str(workdir))}
  assert {n: r.status for n, r in rows.items()} == {
      'alpha_0.25': 'finished', 'alpha_-1.0': 'failed'}
  with open(workdir / 'results.csv') as f:
    table = {r['run']: r for r in csv.DictReader(f)}
  assert list(table['alpha_0.25'])[:3] == ['run', 'model.alpha', 'resolution']
  row = table['alpha_0.25']
  result = result_jax = json.loads(
      (workdir / 'alpha_0.25' / 'eval' / 'step_2.json').read_text())
  assert (float(row['top1']), float(row['top5'])) == (result['top1'],
                                                     result['top5'])
  assert (int(row['resolution']), int(row['steps'])) == (32, 2)
  records = [json.loads(line) for line in
             (workdir / 'alpha_0.25' / 'metrics.jsonl').read_text().splitlines()]
  speeds = [r['img_per_sec'] for r in records
            if r['split'] == 'train' and 'img_per_sec' in r]
  assert len(speeds) == 1  # step 1 compiles and is not timed; step 2 is
  assert float(row['img_per_sec']) == pytest.approx(statistics.median(speeds))
  # Params: the size of the trained checkpoint's parameters.
  variables = pretrained.load_pretrained(str(workdir / 'alpha_0.25'))
  assert int(row['params']) == sum(
      math.prod(x.shape) for x in jax.tree.leaves(variables['params']))
  assert int(row['macs']) == v1_macs(0.25, 32, num_classes=10)
  failed = table['alpha_-1.0']
  assert (failed['status'], failed['top1'], failed['params']) == (
      'failed', '', '')
  markdown = (workdir / 'results.md').read_text().splitlines()
  assert len(markdown) == 2 + 2
  assert markdown[3].startswith('| alpha_-1.0 | -1.0 | 32 |')
  assert markdown[0].endswith(
      '| float top-1 (%) | float ms | int8 top-1 (%) | int8 ms | status |')
  assert (workdir / 'tradeoff.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # The exports: top-1 on the eval split and latency, float and int8.
  run_dir = workdir / 'alpha_0.25'
  for kind, quantization in (('float', 'none'), ('int8', 'int8')):
    result = json.loads(
        (run_dir / 'tflite' / f'step_2.{kind}.result.json').read_text())
    meta = json.loads((run_dir / 'tflite' / f'step_2.{kind}.json').read_text())
    assert (meta['quantization'], meta['step']) == (quantization, 2)
    assert (run_dir / 'tflite' / f'step_2.{kind}.tflite').exists()
    assert result['num_examples'] == 75 and result['threads'] == 1
    assert float(row[f'{kind}_top1']) == result['top1']
    assert float(row[f'{kind}_latency_ms']) == result['latency_ms'] > 0
    assert failed[f'{kind}_top1'] == ''
  # Training's own final evaluation is still what the summary reports.
  assert json.loads(
      (run_dir / 'eval' / 'step_2.json').read_text()) == result_jax
  assert (workdir / 'tradeoff_latency.png').read_bytes()[:8] == (
      b'\x89PNG\r\n\x1a\n')


def test_summarizing_imports_no_tensorflow(tmp_path, data_dir):
  fabricate_run(tmp_path, 'alpha_0.25', 0, {'model.alpha': 0.25}, 'running',
                data_dir, metrics=[(1, 10.0)], steps=100)
  code = ('import sys\n'
          'from mobilenet_jax import sweep_summary\n'
          f'row, = sweep_summary.summarize({str(tmp_path)!r})\n'
          'assert row.macs > 0, row\n'
          "print('tensorflow' in sys.modules)\n")
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == 'False'


def test_tradeoff_series_group_by_all_but_the_fastest_key():
  rows = [sweep_summary.Row(f'r{i}', {'model.alpha': a, 'data.rho': r},
                            'finished', macs=int(1e6 * a * r), top1=0.5)
          for i, (a, r) in enumerate([(1.0, 1.0), (1.0, 0.5), (0.5, 1.0),
                                      (0.5, 0.5)])]
  rows.append(sweep_summary.Row('r4', {'model.alpha': 0.5, 'data.rho': 0.25},
                                'running'))
  series = sweep_summary.tradeoff_series(rows, ['model.alpha', 'data.rho'])
  assert {label: [row.name for row in group]
          for label, group in series.items()} == {
              'alpha=1.0': ['r1', 'r0'], 'alpha=0.5': ['r3', 'r2']}
