"""Faults: a launch that fails leaves the workdir as it was; a diverged run
stops with the step and the metric, keeping its last good checkpoint; an
unreadable newest checkpoint is set aside and the run resumes from the one
before."""

import glob
import os

import jax
import numpy as np
import pytest

from mobilenet_jax import checkpoint
from mobilenet_jax import train

from conftest import restored_state, tiny_config


def _files(workdir):
  """{relative path: bytes} of every file under `workdir`."""
  found = {}
  for path in glob.glob(os.path.join(workdir, '**'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        found[os.path.relpath(path, workdir)] = f.read()
  return found


@pytest.mark.slow
def test_failed_launches_leave_the_workdir_as_it_was(data_dir, tmp_path):
  fresh = tmp_path / 'fresh'
  with pytest.raises(ValueError, match='optim.name must be one of'):
    train.train_and_evaluate(
        tiny_config(data_dir, **{'optim.name': 'adamax'}), str(fresh))
  assert not fresh.exists()

  finished = tmp_path / 'finished'
  train.train_and_evaluate(
      tiny_config(data_dir, num_train_steps=2, checkpoint_every_steps=1),
      str(finished))
  before = _files(finished)
  other_model = tiny_config(data_dir, num_train_steps=2,
                            **{'model.name': 'mobilenet_v2'})
  with pytest.raises(ValueError, match='does not fit this TrainState'):
    train.train_and_evaluate(other_model, str(finished))
  assert _files(finished) == before  # config.json too; nothing set aside


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
