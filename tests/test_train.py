"""Training: one step per family, learning, data parallelism, multi-host,
resume after preemption, transfer learning, evaluation of checkpoints."""

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import default
from mobilenet_jax import checkpoint
from mobilenet_jax import evaluation
from mobilenet_jax import models
from mobilenet_jax import optim
from mobilenet_jax import parallel
from mobilenet_jax import state as state_lib
from mobilenet_jax import train

from conftest import (REPO, main_command, restored_state, tiny_config,
                      tiny_overrides)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_trees_close(a, b, rtol, atol):
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol,
                               err_msg=key)


def run_subprocess(command, env_extra=None, timeout=600, cwd=REPO):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env_extra or {})}
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
  if result.returncode:
    raise AssertionError(f'{command} failed:\n{result.stderr[-3000:]}')
  return result


@pytest.mark.slow
@pytest.mark.parametrize('name', ['mobilenet_v1', 'mobilenet_v2',
                                  'mobilenet_v3_large', 'mobilenet_v3_small',
                                  'mobilenet_v4_conv_small',
                                  'mobilenet_v4_conv_medium',
                                  'mobilenet_v4_conv_large'])
def test_one_train_step_per_family_on_mock_data(name, tmp_path):
  config = tiny_config(None, **{'model.name': name, 'data.dataset': 'cifar10',
                                'num_train_steps': 1, 'batch_size': 4,
                                'optim.warmup_steps': 0,
                                'optim.ema_decay': 0.99})
  with tfds.testing.mock_data(num_examples=12):
    result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 1 and result['ema']
  assert np.isfinite(result['loss'])
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert np.isfinite(lines[0]['loss']) and lines[0]['step'] == 1
  saved = json.loads((tmp_path / 'eval' / 'step_1.json').read_text())
  assert saved == result


def test_a_tiny_run_trains_checkpoints_evaluates_and_writes_its_result(
    data_dir, tmp_path, caplog, monkeypatch):
  # The fast suite's whole loop: any break before the final result fails it.
  # 0.00125 per 2 images at batch 8: 0.005; 200 examples / 8 = 25 steps per
  # epoch, so 0.08 warm-up epochs are 2 steps.
  create_train_iterator = train.data.create_train_iterator

  def slow_input(*args, **kwargs):  # a host pipeline of 0.3 s per batch
    for batch in create_train_iterator(*args, **kwargs):
      time.sleep(0.3)
      yield batch
  monkeypatch.setattr(train.data, 'create_train_iterator', slow_input)
  config = tiny_config(data_dir, num_train_steps=4, log_every_steps=2,
                       checkpoint_every_steps=2, **{
                           'optim.learning_rate': 0.00125,
                           'optim.base_batch_size': 2,
                           'optim.warmup_steps': None,
                           'optim.warmup_epochs': 0.08})
  caplog.set_level('INFO')
  result = train.train_and_evaluate(config, str(tmp_path))
  assert ('learning rate 0.005 (0.00125 x 8 / 2), warm-up 2 steps (0.08 '
          'epochs), 25 steps per epoch, 4 steps') in caplog.messages
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['optim']['learning_rate'] == 0.00125
  assert saved['schedule'] == {'learning_rate': 0.005, 'warmup_steps': 2,
                               'decay_steps': None}
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  train_rows = [r for r in rows if r['split'] == 'train']
  assert [r['step'] for r in train_rows] == [2, 4]
  assert all(np.isfinite(r['loss']) for r in train_rows)
  # Steps 1-2 run at lr 0 and 0.0025 (the warm-up), steps 3-4 at 0.005.
  np.testing.assert_allclose([r['learning_rate'] for r in train_rows],
                             [0.00125, 0.005], rtol=1e-6)
  # Steps 3-4 ran compiled in milliseconds and waited 0.6 s for input.
  assert 0 <= train_rows[0]['input_wait'] <= 1
  assert 0.5 < train_rows[1]['input_wait'] <= 1
  assert any(m.startswith('steps 3-4 waited for the input pipeline')
             for m in caplog.messages)
  manager = checkpoint.create_manager(str(tmp_path), read_only=True)
  assert list(manager.all_steps()) == [2, 4]
  assert result['step'] == 4 and result['num_examples'] == 75
  assert result['checkpoint'] == checkpoint.checkpoint_path(str(tmp_path), 4)
  assert json.loads((tmp_path / 'eval' / 'step_4.json').read_text()) == result
  assert int(restored_state(str(tmp_path)).step) == 4


@pytest.mark.slow
def test_loss_decreases_and_eval_counts_every_example(data_dir, tmp_path):
  # 16 training examples, so that 60 steps must fit them (learning, not
  # generalisation, is what this checks).
  config = tiny_config(data_dir, num_train_steps=60, log_every_steps=10,
                       eval_batch_size=16, **{
                           'data.train_split': 'train[:16]',
                           'model.alpha': 0.5,
                           'optim.learning_rate': 0.01})
  result = train.train_and_evaluate(config, str(tmp_path))
  losses = [json.loads(l)['loss'] for l in open(tmp_path / 'metrics.jsonl')
            if json.loads(l)['split'] == 'train']
  assert losses[-1] < 0.8 * losses[0], losses
  # shapes/tiny's test split (75) is not a multiple of the eval batch (16).
  test_size = train.data.get_dataset_info(config.data).num_examples['test']
  assert test_size % 16 and result['num_examples'] == test_size


@pytest.mark.slow
def test_evaluate_reproduces_training_final_eval(data_dir, tmp_path,
                                                 monkeypatch):
  # A relative workdir, as `make run` gives (orbax writes only absolute ones).
  monkeypatch.chdir(tmp_path)
  workdir = tmp_path / 'run'
  config = tiny_config(data_dir, **{'optim.ema_decay': 0.9})
  final = train.train_and_evaluate(config, 'run')
  os.remove(workdir / 'eval' / 'step_6.json')
  command = [sys.executable, '-m', 'mobilenet_jax.evaluate', '--workdir=run',
             '--step=6']
  run_subprocess(command, cwd=tmp_path)
  again = json.loads((workdir / 'eval' / 'step_6.json').read_text())
  assert again == final
  # --all evaluates every kept checkpoint (steps 3 and 6), without EMA too:
  # beside training's result, not over it.
  run_subprocess(command[:-1] + ['--all', '--use_ema=false'], cwd=tmp_path)
  at_3 = json.loads((workdir / 'eval' / 'step_3.test.raw.json').read_text())
  assert at_3['step'] == 3 and at_3['ema'] is False
  assert json.loads((workdir / 'eval' / 'step_6.json').read_text()) == final


def test_evaluation_overrides_name_their_own_result_file():
  config = default.get_config()  # eval_split 'test', no EMA
  assert checkpoint.result_variant(config, False) == ''
  assert checkpoint.result_variant(
      config, False, overrides={'data.rho': 0.857, 'eval_batch_size': 5}) == (
          'test.raw.eval_batch_size-5.rho-0-857')
  with pytest.raises(ValueError, match=r"an evaluation override must be one "
                                       r"of \['data.rho', "):
    evaluation.Evaluator('unused', overrides={'model.alpha': 1.0})


@pytest.mark.slow
def test_evaluate_with_config_overrides_writes_beside_the_runs_result(
    data_dir, tmp_path):
  workdir = tmp_path / 'run'
  final = train.train_and_evaluate(tiny_config(data_dir), str(workdir))
  own = (workdir / 'eval' / 'step_6.json').read_text()
  # At 40 px, batch 5: the test split's 75 images, into a file of its own.
  evaluator = evaluation.Evaluator(
      str(workdir), overrides={'data.rho': 1.25, 'eval_batch_size': 5})
  assert (evaluator.resolution, evaluator.config.eval_batch_size) == (40, 5)
  at_40 = evaluator.evaluate(6)
  assert at_40['num_examples'] == 75 and at_40['step'] == final['step']
  assert json.loads((workdir / 'eval' / 'step_6.test.raw.eval_batch_size-5.'
                     'rho-1-25.json').read_text()) == at_40
  run_subprocess([sys.executable, '-m', 'mobilenet_jax.evaluate',
                  f'--workdir={workdir}', '--config.data.eval_crop_fraction=0.5'])
  half = json.loads((workdir / 'eval' / 'step_6.test.raw.eval_crop_fraction-'
                     '0-5.json').read_text())
  assert half['num_examples'] == 75 and half['step'] == 6
  assert (workdir / 'eval' / 'step_6.json').read_text() == own


@pytest.mark.slow
@pytest.mark.multiprocess
def test_eight_devices_match_one_device(data_dir, tmp_path):
  # SGD: its update is linear in the gradient, so the two runs' float
  # rounding differences stay that small. Adam divides by sqrt(v), which
  # turns rounding noise on a near-zero gradient into a full-size step.
  # Two steps: this tiny net (1x1 feature maps, batch 8) amplifies rounding
  # differences chaotically after a few more.
  overrides = tiny_overrides(data_dir, num_train_steps=2,
                             checkpoint_every_steps=2, **{
                                 'optim.name': 'sgd',
                                 'optim.learning_rate': 0.005})
  one, eight = tmp_path / 'one', tmp_path / 'eight'
  run_subprocess(main_command(overrides, one))
  run_subprocess(main_command(overrides, eight), env_extra={
      'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  a, b = restored_state(str(one)), restored_state(str(eight))
  assert int(a.step) == int(b.step) == 2
  assert_trees_close(a.params, b.params, rtol=2e-4, atol=1e-4)
  assert_trees_close(a.batch_stats, b.batch_stats, rtol=2e-4, atol=2e-5)


@pytest.mark.multiprocess
def test_batch_not_divisible_by_devices_is_an_error(data_dir, tmp_path):
  overrides = tiny_overrides(data_dir, batch_size=12)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run(main_command(overrides, tmp_path / 'w'), cwd=REPO,
                          env=env, capture_output=True, text=True)
  assert result.returncode == 2
  assert 'batch_size must be a positive multiple of the device count (8)' in (
      result.stderr)
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two_processes(overrides, workdir):
  """`main` as processes 0 and 1 of a jax.distributed job on this host."""
  address = f'127.0.0.1:{_free_port()}'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return [
      subprocess.Popen(
          main_command(overrides, workdir, f'--coordinator_address={address}',
                       '--num_processes=2', f'--process_id={i}'),
          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True)
      for i in range(2)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_and_one_restores(tmp_path):
  # A fresh data_dir: the two processes find the dataset unprepared at once.
  overrides = tiny_overrides(str(tmp_path / 'tfds'), num_train_steps=4,
                             checkpoint_every_steps=2)
  processes = _start_two_processes(overrides, tmp_path)
  for p in processes:
    _, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
  state = restored_state(str(tmp_path))
  assert int(state.step) == 4
  assert all(np.all(np.isfinite(x)) for x in flat(state.params).values())
  result = json.loads((tmp_path / 'eval' / 'step_4.json').read_text())
  assert result['num_examples'] == 75


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
    data_dir, tmp_path):
  # A preempted pod slice: one host gets SIGTERM; every process must save
  # the same step and exit, none left waiting in a collective.
  train.data.get_dataset_info(tiny_config(data_dir).data)
  overrides = tiny_overrides(data_dir, num_train_steps=5000,
                             checkpoint_every_steps=10000,
                             log_every_steps=10)
  processes = _start_two_processes(overrides, tmp_path)
  try:
    deadline = time.time() + 300
    while not _logged_step(tmp_path / 'metrics.jsonl', 20):
      assert time.time() < deadline
      assert all(p.poll() is None for p in processes)
      time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    for p in processes:
      _, stderr = p.communicate(timeout=300)
      assert p.returncode == 0, stderr[-3000:]
  finally:
    for p in processes:
      p.kill()
  stopped_at = checkpoint.create_manager(str(tmp_path),
                                         read_only=True).latest_step()
  assert 20 <= stopped_at < 5000, stopped_at
  assert not (tmp_path / 'eval').exists()


def _logged_step(metrics_file, step):
  """Whether `metrics_file` has a complete line for `step`."""
  if not metrics_file.exists():
    return False
  lines = metrics_file.read_text().split('\n')[:-1]  # the last may be partial
  return any(json.loads(line)['step'] == step for line in lines)


@pytest.mark.slow
def test_resume_after_sigterm_matches_uninterrupted_run(data_dir, tmp_path):
  overrides = tiny_overrides(data_dir, num_train_steps=300,
                             checkpoint_every_steps=1000,
                             log_every_steps=100)
  overrides['model.dropout_rate'] = 0.2  # the resumed rng stream matters
  overrides['optim.ema_decay'] = 0.9
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  process = subprocess.Popen(main_command(overrides, resumed), cwd=REPO,
                             env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  # Wait until it has logged step 100, then preempt.
  deadline = time.time() + 300
  while not _logged_step(resumed / 'metrics.jsonl', 100):
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  stopped_at = checkpoint.create_manager(str(resumed),
                                         read_only=True).latest_step()
  assert 100 <= stopped_at < 300, stopped_at
  assert not (resumed / 'eval').exists()
  run_subprocess(main_command(overrides, resumed))
  run_subprocess(main_command(overrides, straight))
  a, b = restored_state(str(straight)), restored_state(str(resumed))
  assert int(a.step) == int(b.step) == 300
  for field in ('params', 'batch_stats', 'ema', 'opt_state'):
    assert_trees_close(getattr(a, field), getattr(b, field), rtol=1e-5,
                       atol=1e-6)


@pytest.mark.slow
def test_frozen_backbone_transfer_keeps_backbone(data_dir, tmp_path):
  source = tmp_path / 'source'
  train.train_and_evaluate(tiny_config(data_dir), str(source))
  pretrained = restored_state(str(source))
  config = tiny_config(None, **{'data.dataset': 'cifar100',
                                'init_from': str(source),
                                'freeze_backbone': True,
                                'optim.learning_rate': 0.5})
  with tfds.testing.mock_data(num_examples=16):
    train.train_and_evaluate(config, str(tmp_path / 'target'))
    tuned = restored_state(str(tmp_path / 'target'))
  old, new = flat(pretrained.params), flat(tuned.params)
  kernel = "['classifier']['kernel']"
  assert new[kernel].shape == (old[kernel].shape[0], 100)  # a new head
  backbone = [k for k in old if 'classifier' not in k]
  assert backbone
  for key in backbone:
    np.testing.assert_array_equal(old[key], new[key], err_msg=key)
  assert_trees_close(pretrained.batch_stats, tuned.batch_stats, 0, 0)
  first = state_lib.init_variables(
      state_lib.model_from_config(config.model, 100),
      jax.random.PRNGKey(0), 32)['params']['classifier']['kernel']
  assert not np.allclose(new["['classifier']['kernel']"], first)


@pytest.mark.slow
def test_train_step_ema_is_the_decayed_average_of_the_variables():
  model = models.create_model('mobilenet_v1', num_classes=4, alpha=0.25)
  config = default.get_config().optim
  config.schedule, config.warmup_steps = 'constant', 0
  key = jax.random.PRNGKey(0)
  variables = state_lib.init_variables(model, key, 32)
  tx, schedule = optim.create_optimizer(config, 10, variables['params'])
  state = state_lib.create_train_state(model, tx, key, 32, use_ema=True,
                                       variables=variables)
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (4, 32, 32, 3)),
                                jnp.uint8),
           'label': jnp.asarray([0, 1, 2, 3])}
  step = functools.partial(
      train.train_step, model=model, tx=tx, schedule=schedule, num_classes=4,
      label_smoothing=0.1, ema_decay=0.9999, frozen_backbone=False,
      mean=MEAN, std=STD)
  new = jax.jit(step)(state, batch)[0]
  decay = 1 / 10  # TF's warm-up at step 0: min(0.9999, (1 + 0) / (10 + 0))
  expected = jax.tree.map(
      lambda old, now: decay * old + (1 - decay) * now, variables,
      {'params': new.params, 'batch_stats': new.batch_stats})
  got = evaluation.evaluation_variables(new, use_ema=True)
  assert_trees_close(got, expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(flat(got)["['params']['classifier']['kernel']"],
                         flat(new.params)["['classifier']['kernel']"])


def test_unravel_variables_checks_the_vector_size():
  variables = jax.eval_shape(lambda: state_lib.init_variables(
      models.create_model('mobilenet_v2', alpha=0.35), jax.random.PRNGKey(0),
      32))
  size = sum(x.size for x in jax.tree.leaves(variables))
  back = state_lib.unravel_variables(jnp.arange(size, dtype=jnp.float32),
                                     variables['params'],
                                     variables['batch_stats'])
  assert jax.tree.map(lambda x: (x.shape, x.dtype), back) == jax.tree.map(
      lambda x: (x.shape, x.dtype), variables)
  with pytest.raises(ValueError,
                     match=rf'EMA vector has shape \({size - 1},\)'):
    state_lib.unravel_variables(jnp.zeros(size - 1), variables['params'],
                                variables['batch_stats'])


def test_restoring_a_checkpoint_of_another_layout_names_the_fields(tmp_path):
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, 1, {'params': jnp.ones(3), 'ema_params': jnp.ones(3),
                               'opt_state': {'mu': jnp.ones(3)}})
  manager.wait_until_finished()
  vector = jax.ShapeDtypeStruct((3,), jnp.float32)
  for abstract, names in [
      ({'params': vector, 'ema': vector, 'opt_state': {'mu': vector}},
       ['ema_params', "('ema',)"]),
      ({'params': vector, 'ema_params': vector, 'opt_state': vector},
       ['opt_state'])]:
    with pytest.raises(ValueError) as error:
      checkpoint.restore(manager, 1, abstract)
    message = str(error.value)
    assert '\n' not in message and 'does not fit' in message
    for name in names:
      assert name in message, message


def test_bad_settings_fail_before_training(data_dir, tmp_path):
  with pytest.raises(ValueError, match='freeze_backbone needs init_from'):
    train.train_and_evaluate(tiny_config(data_dir, freeze_backbone=True),
                             str(tmp_path))
  with pytest.raises(ValueError, match='num_train_steps or num_epochs'):
    train.train_and_evaluate(tiny_config(data_dir, num_train_steps=0),
                             str(tmp_path))
  with pytest.raises(ValueError, match='model.name must be one of'):
    train.train_and_evaluate(tiny_config(data_dir, **{'model.name': 'resnet'}),
                             str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_evaluations_of_one_run_share_one_compiled_eval_step():
  mesh = parallel.create_mesh()
  first, again = (evaluation.jit_eval_step(
      models.create_model('mobilenet_v1', num_classes=4, alpha=0.25), 4, mesh,
      MEAN, STD) for _ in range(2))
  assert first is again
  other = evaluation.jit_eval_step(
      models.create_model('mobilenet_v1', num_classes=4, alpha=0.5), 4, mesh,
      MEAN, STD)
  assert other is not first


def test_three_evaluations_compile_the_eval_step_once(data_dir):
  """Periodic evaluations of new variables (and the padded last batch) reuse
  one compiled eval step."""
  config = tiny_config(data_dir)
  num_classes = tfds.builder(
      config.data.dataset, data_dir=data_dir).info.features['label'].num_classes
  model = models.create_model('mobilenet_v1', num_classes=num_classes,
                              alpha=0.25)
  mesh = parallel.create_mesh()
  step = evaluation.jit_eval_step(model, num_classes, mesh,
                                  tuple(config.data.mean),
                                  tuple(config.data.std))
  results = []
  for seed in range(3):
    variables = state_lib.init_variables(model, jax.random.key(seed), 32)
    # The classifier starts at zero: shift every weight, as training would.
    variables = jax.tree.map(lambda x, s=seed: x + 0.1 * s, variables)
    results.append(evaluation.evaluate_dataset(
        model, variables, config.data, global_batch_size=7, resolution=32,
        num_classes=num_classes, mesh=mesh))
  assert results[0]['num_examples'] % 7 != 0  # a padded last batch
  assert len({r['loss'] for r in results}) == 3  # three sets of variables
  assert step._cache_size() == 1  # pylint: disable=protected-access


# The pixels by hand in numpy: what the input pipeline yielded before it
# yielded uint8. With mean 0 and std 1/255 (255 * std is exactly 1 in
# float32) the steps' normalisation is the identity, i.e. the old float path.
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)


def _by_hand(pixels, mean=MEAN, std=STD):
  return ((pixels.astype(np.float32) / 255 - np.float32(mean)) /
          np.float32(std)).astype(np.float32)


@pytest.mark.parametrize('dtype', [
    'float32', pytest.param('bfloat16', marks=pytest.mark.slow)])
def test_steps_normalise_uint8_images_as_the_float_path_did(dtype):
  assert np.all(255 * np.float32(IDENTITY['std']) == 1)
  model = models.create_model('mobilenet_v1', num_classes=4, alpha=0.25,
                              dtype=dtype, ops='reference')
  key = jax.random.PRNGKey(0)
  variables = state_lib.init_variables(model, key, 32)
  tx, schedule = optax.sgd(0.1), lambda _: 0.1
  state = state_lib.create_train_state(model, tx, key, 32, use_ema=False,
                                       variables=variables)
  # A batch of 16: BatchNorm over fewer examples amplifies rounding.
  pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3),
                                             np.uint8)
  labels = jnp.asarray(np.arange(16) % 4)
  uint8 = {'image': jnp.asarray(pixels), 'label': labels}
  floats = {'image': jnp.asarray(_by_hand(pixels)), 'label': labels}
  step = functools.partial(
      train.train_step, model=model, tx=tx, schedule=schedule, num_classes=4,
      label_smoothing=0.1, ema_decay=0.0, frozen_backbone=False)
  new, metrics = jax.jit(functools.partial(step, mean=MEAN, std=STD))(
      state, uint8)
  old, old_metrics = jax.jit(functools.partial(step, **IDENTITY))(state,
                                                                   floats)
  # The inputs differ by float32 rounding (a few ulp), bfloat16's after the
  # cast at most by one bfloat16 ulp here and there.
  tolerance = 1e-4 if dtype == 'float32' else 3e-2
  np.testing.assert_allclose(metrics['loss'], old_metrics['loss'],
                             rtol=tolerance)
  # Each variable's change, relative to the largest change of that variable.
  before = flat({'params': state.params, 'stats': state.batch_stats})
  for key, value in flat({'params': new.params,
                          'stats': new.batch_stats}).items():
    expected = flat({'params': old.params, 'stats': old.batch_stats})[key]
    change = np.abs(expected - before[key]).max()
    assert np.abs(value - expected).max() <= tolerance * change, key

  mask = jnp.asarray(np.arange(16) < 13, jnp.float32)
  eval_step = functools.partial(evaluation.eval_step, model=model,
                                num_classes=4)
  sums = jax.jit(functools.partial(eval_step, mean=MEAN, std=STD))(
      variables, {**uint8, 'mask': mask})
  old_sums = jax.jit(functools.partial(eval_step, **IDENTITY))(
      variables, {**floats, 'mask': mask})
  assert_trees_close(sums, old_sums, rtol=tolerance, atol=0)
