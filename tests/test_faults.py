"""Faults: a launch that fails leaves the workdir as it was (a checkpoint
or init_from of another model is one line, from metadata); a diverged run
stops with the step and the metric, keeping its last good checkpoint; an
unreadable newest checkpoint is set aside and the run resumes from the one
before; a failed checkpoint write keeps the older ones; evaluations of
other settings go beside training's result."""

import glob
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from mobilenet_jax import checkpoint
from mobilenet_jax import evaluation
from mobilenet_jax import train

from conftest import (REPO, main_command, restored_state, tiny_config,
                      tiny_overrides)

EMA = {'optim.ema_decay': 0.9}


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory):
  """A finished two-step run with EMA and a checkpoint at each step. Treat
  it as read-only: a test that changes it works on a copy."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  train.train_and_evaluate(
      tiny_config(data_dir, num_train_steps=2, checkpoint_every_steps=1,
                  **EMA), str(workdir))
  return workdir


def _files(workdir):
  """{relative path: bytes} of every file under `workdir`."""
  found = {}
  for path in glob.glob(os.path.join(workdir, '**'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        found[os.path.relpath(path, workdir)] = f.read()
  return found


@pytest.mark.slow
def test_failed_launches_leave_the_workdir_as_it_was(data_dir, finished_run,
                                                     tmp_path):
  fresh = tmp_path / 'fresh'
  with pytest.raises(ValueError, match='optim.name must be one of'):
    train.train_and_evaluate(
        tiny_config(data_dir, **{'optim.name': 'adamax'}), str(fresh))
  assert not fresh.exists()

  # A rerun with another model or optimizer: one line naming the fields and
  # arrays that differ, from the checkpoint's metadata (nothing compiled).
  finished = tmp_path / 'finished'
  shutil.copytree(finished_run, finished)
  before = _files(finished)
  for overrides, named in [
      ({'model.name': 'mobilenet_v2'},
       "model.name 'mobilenet_v1' saved, 'mobilenet_v2' here"),
      ({'model.alpha': 0.5}, 'model.alpha 0.25 saved, 0.5 here'),
      ({'optim.name': 'sgd'}, "optim.name 'adamw' saved, 'sgd' here")]:
    config = tiny_config(data_dir, num_train_steps=2, **EMA, **overrides)
    with pytest.raises(ValueError, match='does not fit this TrainState') as e:
      train.train_and_evaluate(config, str(finished))
    message = str(e.value)
    assert '\n' not in message and named in message, message
    assert 'of another shape' in message or 'not in the checkpoint' in message
  assert _files(finished) == before  # config.json too; nothing set aside

  # init_from another model: one line, before anything is created.
  for overrides in ({'model.name': 'mobilenet_v2'}, {'model.alpha': 0.5}):
    config = tiny_config(data_dir, init_from=str(finished_run), **overrides)
    with pytest.raises(ValueError, match='does not fit this model') as e:
      train.train_and_evaluate(config, str(fresh))
    assert '\n' not in str(e.value) and 'saved,' in str(e.value)
  assert not fresh.exists()


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_no_file(data_dir, finished_run,
                                                  tmp_path, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)  # copy2: mtimes kept
  stats = {path: os.stat(os.path.join(workdir, path)).st_mtime_ns
           for path in _files(workdir)}
  before = _files(workdir)
  stored = json.loads((workdir / 'eval' / 'step_2.json').read_text())
  with caplog.at_level('INFO'):
    result = train.train_and_evaluate(
        tiny_config(data_dir, num_train_steps=2, checkpoint_every_steps=1,
                    **EMA), str(workdir))
  assert result == stored
  assert _files(workdir) == before  # no file added, removed or changed
  assert {path: os.stat(os.path.join(workdir, path)).st_mtime_ns
          for path in before} == stats
  assert any(record.getMessage().startswith(
      f"already finished at step 2: top1 {stored['top1']:.4f}")
             for record in caplog.records)


@pytest.mark.slow
def test_evaluations_of_other_settings_go_beside_trainings_result(
    finished_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  own_path = workdir / 'eval' / 'step_2.json'
  own = own_path.read_bytes()
  half = evaluation.Evaluator(str(workdir), split='test[:50%]').evaluate(2)
  raw = evaluation.Evaluator(str(workdir), use_ema=False).evaluate(2)
  again = evaluation.Evaluator(str(workdir)).evaluate(2)  # training's own
  assert own_path.read_bytes() == own  # never replaced
  assert sorted(os.listdir(workdir / 'eval')) == [
      'step_2.json', 'step_2.test.raw.json', 'step_2.test_to50pct.ema.json']
  trained = json.loads(own)
  assert {**again, 'checkpoint': None} == {**trained, 'checkpoint': None}
  saved = json.loads((workdir / 'eval' / 'step_2.test_to50pct.ema.json')
                     .read_text())
  assert saved == half and half['split'] == 'test[:50%]' and half['ema']
  assert half['num_examples'] < trained['num_examples']
  assert raw['ema'] is False and raw['split'] == 'test'
  assert raw['num_examples'] == trained['num_examples']


@pytest.mark.slow
def test_a_stored_result_is_read_back_and_force_writes_a_new_file(
    finished_run, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  before = _files(workdir)
  calls = []
  evaluate_dataset = evaluation.evaluate_dataset
  monkeypatch.setattr(evaluation, 'evaluate_dataset',
                      lambda *a, **k: calls.append(1) or evaluate_dataset(
                          *a, **k))
  evaluator = evaluation.Evaluator(str(workdir))
  stored = evaluator.evaluate(2)
  assert calls == [] and _files(workdir) == before  # nothing evaluated
  assert stored == json.loads(before[os.path.join('eval', 'step_2.json')])
  again = evaluator.evaluate(2, force=True)
  assert calls == [1]
  after = _files(workdir)
  new = os.path.join('eval', 'step_2.2.json')
  assert sorted(set(after) - set(before)) == [new]  # nothing else rewritten
  assert {k: after[k] for k in before} == before
  assert json.loads(after[new]) == again
  # The same weights and data: the same numbers as training's evaluation.
  assert again['top1'] == stored['top1']
  assert again['num_examples'] == stored['num_examples']
  evaluator.evaluate(2, force=True)
  assert os.path.join('eval', 'step_2.3.json') in _files(workdir)


@pytest.mark.slow
def test_a_failed_checkpoint_write_keeps_the_older_ones(data_dir, finished_run,
                                                        tmp_path):
  pytest.importorskip('resource')  # Unix: RLIMIT_FSIZE
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  kept = _files(workdir / checkpoint.CHECKPOINT_SUBDIR)

  overrides = tiny_overrides(data_dir, num_train_steps=4,
                             checkpoint_every_steps=1, **EMA)
  # Files over 256 KiB fail to write (EFBIG, a real OS error), as on a full
  # disk: the checkpoint's largest file is about 2 MB, the others smaller.
  limit = ('import os, resource, sys; resource.setrlimit('
           'resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit('
           'resource.RLIMIT_FSIZE)[1])); os.execv(sys.executable, '
           '[sys.executable] + sys.argv[1:])')
  command = main_command(overrides, workdir)
  result = subprocess.run(
      [command[0], '-c', limit, *command[1:]], cwd=REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu',
           'JAX_ENABLE_COMPILATION_CACHE': 'false'},
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  # One error line (tensorstore's threads may still print "error in the
  # background: ..." lines as the process exits, after it).
  assert [line for line in result.stderr.splitlines()
          if line.startswith('error: ')] == [
              f'error: could not write the checkpoint of step 3 in workdir '
              f'{workdir}: [Errno 27] File too large; checkpoints kept: 1, 2']
  # orbax logs the failure from each of its threads, without tracebacks.
  assert 'Traceback' not in result.stderr
  # Steps 1 and 2 as they were, no partial step 3, and step 2 restores.
  assert _files(workdir / checkpoint.CHECKPOINT_SUBDIR) == kept
  assert int(restored_state(str(workdir)).step) == 2


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(
    data_dir, tmp_path):
  config = tiny_config(data_dir, num_train_steps=30, log_every_steps=10,
                       checkpoint_every_steps=1,
                       **{'optim.learning_rate': 1e30})
  with pytest.raises(train.NonFiniteMetricError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(e.value)
  assert len(message.splitlines()) == 1
  bad_step = int(message.split(' at step ')[1].split(':')[0])
  assert message.split(' is ')[0] in ('loss', 'top1')
  manager = checkpoint.create_manager(str(tmp_path), read_only=True)
  kept = manager.latest_step()
  assert kept == bad_step - 1, (kept, message)
  assert f'step {kept}, is kept' in message
  state = restored_state(str(tmp_path))
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_an_unreadable_newest_checkpoint_is_set_aside(data_dir, tmp_path,
                                                      caplog):
  train.train_and_evaluate(
      tiny_config(data_dir, num_train_steps=4, checkpoint_every_steps=2),
      str(tmp_path))
  newest = tmp_path / checkpoint.CHECKPOINT_SUBDIR / '4'
  for path in glob.glob(str(newest / 'default' / 'ocdbt.process_0' / 'd' /
                            '*')):
    with open(path, 'r+b') as f:
      f.truncate(10)  # cut short, as by a full disk or a killed writer
  result = train.train_and_evaluate(
      tiny_config(data_dir, num_train_steps=6, checkpoint_every_steps=2),
      str(tmp_path))
  assert result['step'] == 6
  assert 'set aside as 4.unreadable, resuming from step 2' in caplog.text
  assert (newest.parent / '4.unreadable').is_dir()
  manager = checkpoint.create_manager(str(tmp_path), read_only=True)
  assert manager.all_steps() == [2, 4, 6]  # step 4 saved again


def _truncated_checkpoints(directory, which):
  """Checkpoints 1 and 2 of a small state, then the files of step 2 that
  `which` selects cut to half their size (a full disk, a killed copy)."""
  state = {'params': {'w': jax.numpy.arange(1000.0),
                      'b': jax.numpy.ones(3)}, 'step': jax.numpy.int32(0)}
  manager = checkpoint.create_manager(str(directory))
  for step in (1, 2):
    checkpoint.save(manager, step, state)
    manager.wait_until_finished()
  manager.close()
  files = [p for p in (directory / checkpoint.CHECKPOINT_SUBDIR / '2').rglob(
      '*') if p.is_file() and which(p)]
  assert files
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(path.stat().st_size // 2)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


@pytest.mark.parametrize('which', [
    pytest.param(lambda p: True, id='every file'),
    pytest.param(lambda p: p.name == '_CHECKPOINT_METADATA',
                 id='_CHECKPOINT_METADATA'),
    pytest.param(lambda p: p.name == '_METADATA', id='item _METADATA'),
    pytest.param(lambda p: p.parent.name == 'd', id='arrays'),
])
def test_a_truncated_newest_checkpoint_is_corrupt_not_another_models(
    tmp_path, which):
  abstract = _truncated_checkpoints(tmp_path, which)
  manager = checkpoint.create_manager(str(tmp_path))
  try:
    checkpoint.check_fits(manager, 2, abstract)  # no "another model" error
    step, state = checkpoint.restore_latest(manager, abstract)
    assert step == 1
    np.testing.assert_array_equal(state['params']['w'], np.arange(1000.0))
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == [
        '1', '2.unreadable']
    # Readable metadata of other arrays is still another model's.
    other = {'params': {'w': abstract['params']['w']},
             'step': abstract['step']}
    with pytest.raises(ValueError, match=r'\(saved by another model or '
                                         r'optimizer\): 1 arrays only in'):
      checkpoint.check_fits(manager, 1, other)
  finally:
    manager.close()
