"""Op sets: how `auto` resolves, and that the `reference` networks are plain
Flax (forward-mode autodiff works, no custom VJP, depthwise convolutions
with feature_group_count = channels) and train in the TPU configuration.
(The cpu op set against the reference: test_cpu_layers.py.)"""

import functools

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import tpu
from mobilenet_jax import models
from mobilenet_jax import ops
from mobilenet_jax import state as state_lib
from mobilenet_jax import train


@pytest.mark.parametrize('backend, expected', [
    ('cpu', 'cpu'), ('tpu', 'reference'), ('gpu', 'reference'),
    ('cuda', 'reference'), ('rocm', 'reference'), ('METAL', 'reference')])
def test_auto_resolves_per_backend(backend, expected):
  assert ops.resolve('auto', backend) == expected


def test_names_pass_through_and_auto_follows_the_default_backend():
  for name in ops.OP_SETS:
    assert ops.resolve(name, 'tpu') == name
  assert ops.resolve('auto') == ops.resolve('auto', jax.default_backend())
  model = models.create_model('mobilenet_v2')
  assert model.ops == ops.resolve('auto') != 'auto'


def test_unknown_op_set_names_the_field_and_the_choices():
  with pytest.raises(ValueError) as e:
    models.create_model('mobilenet_v2', ops='fast')
  message = str(e.value)
  assert message.startswith('ops must be one of')
  for name in ops.NAMES:
    assert repr(name) in message
  assert "'fast'" in message


def _tiny(name, ops_name='reference'):
  return models.create_model(name, alpha=0.35, num_classes=5,
                             dropout_rate=0.0, ops=ops_name)


@pytest.mark.slow
def test_jvp_through_the_reference_model_is_the_transposed_vjp():
  """Forward mode works through every kind of layer (V3: depthwise, SE,
  hard-swish; the cpu kernels' custom VJPs have none), and agrees with
  reverse mode: <J t, u> = <t, J^T u>."""
  model = _tiny('mobilenet_v3_small')
  rng = np.random.default_rng(0)
  x, t = (jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
          for _ in range(2))
  variables = model.init(jax.random.key(0), x)
  f = functools.partial(model.apply, variables, train=False)
  _, jt = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, t)
  u = jnp.asarray(rng.normal(size=jt.shape), jnp.float32)
  (jtu,) = jax.jit(lambda x, u: jax.vjp(f, x)[1](u))(x, u)
  np.testing.assert_allclose(jnp.vdot(jt, u), jnp.vdot(t, jtu), rtol=1e-4)


def _equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs (jit, loops) too."""
  yield from jaxpr.eqns
  for sub in jax_core.subjaxprs(jaxpr):
    yield from _equations(getattr(sub, 'jaxpr', sub))


def _train_step_jaxpr(model, resolution=32, batch_size=2):
  """The jaxpr of `train.train_step` for `model` (SGD, no EMA)."""
  tx = optax.sgd(0.1)
  state = jax.eval_shape(lambda: state_lib.create_train_state(
      model, tx, jax.random.key(0), resolution, use_ema=False))
  batch = {'image': jnp.zeros((batch_size, resolution, resolution, 3),
                             jnp.uint8),
           'label': jnp.zeros((batch_size,), jnp.int32)}
  step = functools.partial(
      train.train_step, model=model, tx=tx, schedule=lambda _: 0.1,
      num_classes=5, label_smoothing=0.1, ema_decay=0.0,
      frozen_backbone=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
  return jax.make_jaxpr(step)(state, batch).jaxpr


@pytest.mark.parametrize('name', [
    pytest.param('mobilenet_v1', marks=pytest.mark.slow), 'mobilenet_v2',
    pytest.param('mobilenet_v3_large', marks=pytest.mark.slow)])
def test_reference_train_step_is_plain_flax(name):
  model = _tiny(name)
  equations = list(_equations(_train_step_jaxpr(model)))
  primitives = {eqn.primitive.name for eqn in equations}
  # (jax.nn.relu6 is a custom_jvp: TensorFlow's derivative at the kinks.)
  assert not any('custom_vjp' in p for p in primitives), primitives
  depthwise_layers = sum(
      1 for layer in model.plan if layer.kind != 'conv')  # one per block
  grouped = [eqn for eqn in equations
             if eqn.primitive.name == 'conv_general_dilated'
             and eqn.params['feature_group_count'] > 1]
  # Forward convolutions: input channels = groups = output channels. (The
  # backward pass's input gradients are grouped convolutions too.)
  forward = [eqn for eqn in grouped
             if eqn.invars[0].aval.shape[-1]
             == eqn.params['feature_group_count']
             == eqn.outvars[0].aval.shape[-1]
             and eqn.invars[1].aval.shape[2] == 1]
  assert len(forward) >= depthwise_layers
  for eqn in grouped:
    assert eqn.params['feature_group_count'] == eqn.invars[0].aval.shape[-1]
  # The same step with the cpu op set has no grouped convolution and the
  # kernels' custom VJPs: what this test tells apart.
  cpu_equations = list(_equations(_train_step_jaxpr(_tiny(name, 'cpu'))))
  assert any('custom_vjp' in eqn.primitive.name for eqn in cpu_equations)
  assert not any(eqn.primitive.name == 'conv_general_dilated'
                 and eqn.params['feature_group_count'] > 1
                 for eqn in cpu_equations)


@pytest.mark.slow
def test_tpu_config_trains_with_the_reference_op_set_in_bfloat16(tmp_path):
  """configs/tpu.py as a TPU resolves it (ops 'reference', bfloat16),
  shrunk to two steps on mock data: it compiles and trains on CPU."""
  config = tpu.get_config('recipe=imagenet_mobilenet_v2,alpha=0.35,'
                          'batch_size=4')
  assert config.model.dtype == 'bfloat16'
  assert ops.resolve(config.model.ops, 'tpu') == 'reference'
  config.model.ops = 'reference'
  config.data.dataset = 'cifar10'
  config.data.base_resolution = 32
  config.num_train_steps = 2
  config.optim.warmup_epochs = None  # the recipe gives it in epochs
  config.optim.warmup_steps = 1
  config.log_every_steps = 1
  config.checkpoint_every_steps = 0
  with tfds.testing.mock_data(num_examples=8):
    result = train.train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 2 and np.isfinite(result['loss'])


@pytest.mark.slow
def test_op_sets_experiment_times_both_sets_in_both_modes():
  from experiments import op_sets  # pylint: disable=g-import-not-at-top
  rows = op_sets.measure('mobilenet_v3_small_minimal', 'float32',
                         batch_size=2, resolution=32, steps=2, warmup=1)
  assert sorted((r['ops'], r['mode']) for r in rows) == sorted(
      (o, m) for o in ops.OP_SETS for m in op_sets.MODES)
  for row in rows:
    assert row['img_per_sec'] == pytest.approx(
        2 / (row['step_ms_median'] / 1000))
    assert 0 < row['step_ms_min'] <= row['step_ms_median']
  lines = op_sets.format_table(rows).splitlines()
  assert len(lines) == 2 + len(rows)  # header, rule, rows
  for line in lines:
    if '| reference |' in line:
      assert line.endswith('| 1.00 |')  # its time over its own
