"""mobilenet_jax.optim against closed forms and numpy re-implementations."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from mobilenet_jax import models, optim


def make_config(**overrides):
  """configs/default.py's optim fields, without warm-up, and `overrides`."""
  config = default.get_config().optim
  config.warmup_steps = 0
  config.update(overrides)
  return config


def small_params():
  rng = np.random.default_rng(0)
  return {
      'dense': {'kernel': jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
                'bias': jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
      'bn': {'scale': jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
  }


def run_steps(tx, params, grads_per_step):
  """Applies `tx` for each gradient pytree in turn; returns the params."""
  state, update = tx.init(params), jax.jit(tx.update)
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def random_grads(params, steps, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
          for _ in range(steps)]


# ---------------------------------------------------------------- config ---


def test_default_config_sets_every_field():
  config = default.get_config().optim
  assert sorted(config) == sorted(optim.FIELDS)
  assert config.name in optim.OPTIMIZERS
  assert config.schedule in optim.SCHEDULES
  optim.create_optimizer(config, 100, small_params(), steps_per_epoch=10)


def test_missing_field_raises_naming_it():
  config = make_config()
  del config['rmsprop_epsilon']
  with pytest.raises(ValueError, match=r'optim\.rmsprop_epsilon is not set'):
    optim.create_optimizer(config, 100, small_params(), steps_per_epoch=10)


def test_config_saved_before_base_batch_and_warmup_epochs_builds():
  """An old workdir's config.json has neither optim.base_batch_size nor
  optim.warmup_epochs: the lr is absolute and the warm-up in steps."""
  saved = make_config(learning_rate=0.4, warmup_steps=10,
                      schedule='cosine').to_dict()
  del saved['base_batch_size'], saved['warmup_epochs']
  config = ml_collections.ConfigDict(saved)
  resolved = optim.resolve_schedule(config, num_train_steps=110,
                                    batch_size=4096)
  assert resolved['learning_rate'] == 0.4
  assert resolved['warmup_steps'] == 10
  _, schedule = optim.create_optimizer(config, 110, small_params(),
                                       batch_size=4096)
  np.testing.assert_allclose(schedule(5), 0.4 * 5 / 10, rtol=1e-6)
  del saved['warmup_steps']  # the other fields stay required
  with pytest.raises(ValueError, match=r'optim\.warmup_steps is not set'):
    optim.create_optimizer(ml_collections.ConfigDict(saved), 110,
                           small_params())


# ------------------------------------------------------------- schedules ---


def test_warmup_cosine_schedule_closed_form():
  lr, w, total = 0.4, 10, 110
  schedule = optim.create_learning_rate_schedule(
      make_config(schedule='cosine', learning_rate=lr, warmup_steps=w), total)
  for step in (0, 3, 5, 9):
    np.testing.assert_allclose(schedule(step), lr * step / w, rtol=1e-6)
  for step in (10, 35, 60, 100, 109):
    expected = lr * 0.5 * (1 + math.cos(math.pi * (step - w) / (total - w)))
    np.testing.assert_allclose(schedule(step), expected, rtol=1e-5,
                               atol=1e-7)
  np.testing.assert_allclose(schedule(total), 0.0, atol=1e-7)
  np.testing.assert_allclose(schedule(total + 50), 0.0, atol=1e-7)


def test_cosine_without_warmup_starts_at_peak():
  schedule = optim.create_learning_rate_schedule(
      make_config(schedule='cosine', learning_rate=0.1, warmup_steps=0), 20)
  np.testing.assert_allclose(schedule(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(schedule(10), 0.05, rtol=1e-5)


def test_warmup_exponential_staircase_closed_form():
  lr, rate, w = 0.1, 0.5, 5
  # decay every int(2.5 * 4) = 10 steps, counted from step 0.
  schedule = optim.create_learning_rate_schedule(
      make_config(schedule='exponential', learning_rate=lr, warmup_steps=w,
                  decay_rate=rate, decay_epochs=2.5), 1000, steps_per_epoch=4)
  for step in (0, 1, 4):
    np.testing.assert_allclose(schedule(step), lr * step / w, rtol=1e-6)
  for step in (5, 9, 10, 19, 20, 35, 99):
    np.testing.assert_allclose(schedule(step), lr * rate ** (step // 10),
                               rtol=1e-6)


def test_constant_schedule_with_warmup():
  schedule = optim.create_learning_rate_schedule(
      make_config(schedule='constant', learning_rate=0.3, warmup_steps=4), 50)
  np.testing.assert_allclose([schedule(s) for s in (0, 2, 4, 49)],
                             [0.0, 0.15, 0.3, 0.3], rtol=1e-6)


def test_base_rate_and_warmup_epochs_resolve_for_the_global_batch():
  # 0.1 per 256 images at batch 1024: 0.4 (the linear scaling rule); a
  # warm-up of 2.5 epochs of 12 steps: int(30.0) = 30 steps.
  config = make_config(schedule='constant', learning_rate=0.1,
                       base_batch_size=256, warmup_steps=None,
                       warmup_epochs=2.5)
  assert optim.resolve_schedule(
      config, num_train_steps=100, steps_per_epoch=12, batch_size=1024) == {
          'learning_rate': 0.4, 'warmup_steps': 30, 'decay_steps': None}
  schedule = optim.create_learning_rate_schedule(config, 100, 12, 1024)
  np.testing.assert_allclose([schedule(s) for s in (0, 15, 30, 99)],
                             [0.0, 0.2, 0.4, 0.4], rtol=1e-6)
  # Without a base batch the rate is the global batch's, whatever its size.
  absolute = make_config(schedule='constant', learning_rate=0.1)
  for batch in (None, 64, 4096):
    assert optim.resolve_schedule(
        absolute, num_train_steps=100, batch_size=batch)['learning_rate'] == 0.1


# ------------------------------------------------------------ optimizers ---


def numpy_tf_rmsprop(params, grads_per_step, lrs, rho, momentum, eps, wd,
                     decayed):
  """TensorFlow's RMSProp (tf.compat.v1.train.RMSPropOptimizer) with
  momentum and an L2 term wd * p added to the gradients of `decayed` leaves."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  ms = {k: np.ones_like(v) for k, v in params.items()}
  mom = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for k in params:
      g = np.asarray(grads[k], np.float64)
      if k in decayed:
        g = g + wd * params[k]
      ms[k] = rho * ms[k] + (1 - rho) * g ** 2
      mom[k] = momentum * mom[k] + lr * g / np.sqrt(ms[k] + eps)
      params[k] = params[k] - mom[k]
  return params


def test_rmsprop_tf_matches_numpy_tensorflow_rmsprop():
  lr, w, wd = 0.05, 2, 0.01
  config = make_config(name='rmsprop_tf', schedule='constant',
                       learning_rate=lr, warmup_steps=w, weight_decay=wd,
                       momentum=0.9, rmsprop_decay=0.9, rmsprop_epsilon=0.002)
  params = {'kernel': small_params()['dense']['kernel'],
            'bias': small_params()['dense']['bias']}
  grads = random_grads(params, 5)
  tx, _ = optim.create_optimizer(config, 100, params)
  got = run_steps(tx, params, grads)
  lrs = [lr * min(step / w, 1.0) for step in range(5)]
  expected = numpy_tf_rmsprop(params, grads, lrs, 0.9, 0.9, 0.002, wd,
                              decayed={'kernel'})
  for k in params:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6)


def test_sgd_nesterov_matches_numpy():
  lr, m = 0.1, 0.9
  config = make_config(name='sgd', schedule='constant', learning_rate=lr,
                       momentum=m, nesterov=True, weight_decay=0.0)
  params = {'kernel': small_params()['dense']['kernel']}
  grads = random_grads(params, 4)
  tx, _ = optim.create_optimizer(config, 100, params)
  got = run_steps(tx, params, grads)
  p = np.asarray(params['kernel'], np.float64)
  v = np.zeros_like(p)
  for g in grads:
    g = np.asarray(g['kernel'], np.float64)
    v = m * v + g
    p = p - lr * (g + m * v)
  np.testing.assert_allclose(got['kernel'], p, rtol=1e-5, atol=1e-6)


def test_coupled_l2_adds_wd_times_param_to_masked_leaves_only():
  lr, wd = 0.1, 0.3
  config = make_config(name='sgd', schedule='constant', learning_rate=lr,
                       momentum=0.0, weight_decay=wd)
  params = small_params()
  grads = random_grads(params, 1)[0]
  tx, _ = optim.create_optimizer(config, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  kernel = params['dense']['kernel']
  np.testing.assert_allclose(
      updates['dense']['kernel'],
      -lr * (grads['dense']['kernel'] + wd * kernel), rtol=1e-6)
  np.testing.assert_allclose(updates['dense']['bias'],
                             -lr * grads['dense']['bias'], rtol=1e-6)
  np.testing.assert_allclose(updates['bn']['scale'],
                             -lr * grads['bn']['scale'], rtol=1e-6)


def test_adamw_decay_is_decoupled_and_masked():
  # With zero gradients Adam's step is 0, so only -lr * wd * param remains.
  lr, wd = 0.1, 0.2
  config = make_config(name='adamw', schedule='constant', learning_rate=lr,
                       weight_decay=wd)
  params = small_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx, _ = optim.create_optimizer(config, 10, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['kernel'],
                             -lr * wd * params['dense']['kernel'], rtol=1e-6)
  np.testing.assert_array_equal(updates['dense']['bias'], 0.0)
  np.testing.assert_array_equal(updates['bn']['scale'], 0.0)


def test_adamw_matches_optax_adamw():
  lr, wd = 0.01, 0.1
  config = make_config(name='adamw', schedule='constant', learning_rate=lr,
                       weight_decay=wd, adam_b1=0.8, adam_b2=0.99,
                       adam_epsilon=1e-6)
  params = small_params()
  grads = random_grads(params, 4)
  tx, _ = optim.create_optimizer(config, 10, params)
  mask = optim.weight_decay_mask(params, decay_depthwise=False)
  reference = optax.adamw(lr, b1=0.8, b2=0.99, eps=1e-6, weight_decay=wd,
                          mask=mask)
  got, expected = run_steps(tx, params, grads), run_steps(reference, params,
                                                           grads)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name,statistics',
                         [('sgd', 1), ('rmsprop_tf', 2), ('adamw', 2)])
def test_optimizer_state_is_one_vector_per_statistic(name, statistics):
  # Per-leaf state would be `statistics` vectors per parameter leaf: one
  # small XLA kernel each in the train step.
  params = small_params()
  config = make_config(name=name, schedule='constant')
  tx, _ = optim.create_optimizer(config, 10, params)
  vectors = [x for x in jax.tree.leaves(tx.init(params)) if x.ndim > 0]
  assert [x.shape for x in vectors] == [(2 * 3 + 3 + 3,)] * statistics


def test_grad_clip_norm_scales_the_gradient():
  config = make_config(name='sgd', schedule='constant', learning_rate=1.0,
                       momentum=0.0, weight_decay=0.0, grad_clip_norm=0.5)
  params = {'kernel': jnp.zeros((2, 2))}
  grads = {'kernel': jnp.full((2, 2), 3.0)}  # global norm 6
  tx, _ = optim.create_optimizer(config, 10, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -3.0 * 0.5 / 6.0, rtol=1e-6)


def test_frozen_leaves_get_zero_updates_and_no_state():
  config = make_config(name='rmsprop_tf', schedule='constant',
                       learning_rate=0.1, weight_decay=0.1)
  params = small_params()
  trainable = {'dense': {'kernel': False, 'bias': True},
               'bn': {'scale': True}}
  tx, _ = optim.create_optimizer(config, 10, params, trainable_mask=trainable)
  state = tx.init(params)
  updates, _ = tx.update(random_grads(params, 1)[0], state, params)
  np.testing.assert_array_equal(updates['dense']['kernel'], 0.0)
  assert np.all(np.asarray(updates['dense']['bias']) != 0)
  assert np.all(np.asarray(updates['bn']['scale']) != 0)
  # RMSProp keeps ms and mom for each of the two trainable (3,) leaves only.
  state_sizes = [x.size for x in jax.tree.leaves(state) if x.ndim > 0]
  assert sum(state_sizes) == 2 * (3 + 3)


# ------------------------------------------------------ weight-decay mask ---


def module_paths_by_class(model, images):
  """Params of `model` (with the `reference` op set) and the paths of its
  Conv/Dense modules and of its depthwise (grouped) Conv modules, found by
  class while it is traced."""
  kernels, depthwise = set(), set()

  def record(module, unused_method_name):
    if isinstance(module, (nn.Conv, nn.Dense)):
      kernels.add(module.path)
    if isinstance(module, nn.Conv) and module.feature_group_count > 1:
      depthwise.add(module.path)
    return False

  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, capture_intermediates=record),
      images)
  return variables['params'], kernels, depthwise


@pytest.mark.parametrize('name', ['mobilenet_v3_small', 'mobilenet_v1'])
@pytest.mark.parametrize('decay_depthwise', [False, True])
def test_weight_decay_mask_on_real_model(name, decay_depthwise):
  model = models.create_model(name, alpha=0.35 if 'v3' in name else 0.25,
                              ops='reference')
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  params, kernel_modules, depthwise_modules = module_paths_by_class(
      model, images)
  # Each V1 separable block and each V2/V3 inverted residual has exactly one.
  assert len(depthwise_modules) == sum(b.kind != 'conv' for b in model.plan)

  mask = optim.weight_decay_mask(params, decay_depthwise=decay_depthwise)
  flat_mask = {tuple(k.key for k in path): value for path, value
               in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert set(flat_mask) == {
      tuple(k.key for k in path)
      for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, value in flat_mask.items():
    module, leaf = path[:-1], path[-1]
    expected = leaf == 'kernel' and module in kernel_modules and (
        decay_depthwise or module not in depthwise_modules)
    assert value == expected, path
  n_decayed = len(kernel_modules) - (0 if decay_depthwise else
                                     len(depthwise_modules))
  assert sum(flat_mask.values()) == n_decayed


# ------------------------------------------------------------------ loss ---


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.4])
def test_cross_entropy_with_label_smoothing_closed_form(eps):
  rng = np.random.default_rng(0)
  num_classes = 5
  logits = rng.normal(size=(4, num_classes)) * 3
  labels = np.array([0, 3, 4, 3])
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  per_example = (-(1 - eps) * log_p[np.arange(4), labels]
                 - eps / num_classes * log_p.sum(-1))
  loss = optim.cross_entropy_loss(jnp.asarray(logits, jnp.float32),
                                  jnp.asarray(labels), num_classes, eps)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-5)


def test_cross_entropy_is_float32_for_bfloat16_logits():
  logits = jnp.asarray([[2.0, -1.0, 0.5]], jnp.bfloat16)
  loss = optim.cross_entropy_loss(logits, jnp.asarray([0]), 3, 0.0)
  assert loss.dtype == jnp.float32
  log_p = np.asarray(logits, np.float32) - np.log(
      np.exp(np.asarray(logits, np.float32)).sum())
  np.testing.assert_allclose(loss, -log_p[0, 0], rtol=1e-6)


# ------------------------------------------------------------------- EMA ---


def test_ema_update_formula():
  ema = {'a': jnp.asarray([1.0, 2.0]), 'b': {'mean': jnp.asarray([4.0])}}
  new = {'a': jnp.asarray([3.0, -2.0]), 'b': {'mean': jnp.asarray([0.0])}}
  out = optim.ema_update(ema, new, 0.75)
  np.testing.assert_allclose(out['a'], [0.75 * 1 + 0.25 * 3,
                                        0.75 * 2 + 0.25 * -2])
  np.testing.assert_allclose(out['b']['mean'], [3.0])
  assert out['a'].dtype == jnp.float32


def test_ema_decay_warmup_is_tf_style():
  for step in (0, 1, 10, 100, 100_000):
    np.testing.assert_allclose(optim.ema_decay_at(step, 0.9999),
                               min(0.9999, (1 + step) / (10 + step)),
                               rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay_at(0, 0.99, warmup=False), 0.99)
  traced = jax.jit(lambda s: optim.ema_decay_at(s, 0.999))(jnp.asarray(5))
  np.testing.assert_allclose(traced, 6 / 15, rtol=1e-6)


# ---------------------------------------------------------------- errors ---


@pytest.mark.parametrize('field, value, message', [
    ('name', 'adam', r"optim\.name must be one of \['adamw', 'rmsprop_tf', "
                     r"'sgd'\], got 'adam'"),
    ('schedule', 'linear', r"optim\.schedule must be one of \['constant', "
                           r"'cosine', 'exponential'\]"),
    ('learning_rate', -0.1, r'optim\.learning_rate must be >= 0'),
    ('weight_decay', -1e-5, r'optim\.weight_decay must be >= 0'),
    ('ema_decay', 1.0, r'optim\.ema_decay must be in \[0, 1\)'),
    ('ema_decay', -0.5, r'optim\.ema_decay must be in \[0, 1\)'),
    ('label_smoothing', 1.0, r'optim\.label_smoothing must be in \[0, 1\)'),
    ('label_smoothing', -0.1, r'optim\.label_smoothing'),
    ('momentum', 1.0, r'optim\.momentum must be in \[0, 1\)'),
    ('rmsprop_decay', 1.5, r'optim\.rmsprop_decay'),
    ('adam_b2', 1.0, r'optim\.adam_b2'),
    ('warmup_steps', -1, r'optim\.warmup_steps must be an int >= 0'),
    ('decay_rate', 0.0, r'optim\.decay_rate must be > 0'),
    ('decay_epochs', 0.0, r'optim\.decay_epochs must be > 0'),
    ('rmsprop_epsilon', 0.0, r'optim\.rmsprop_epsilon must be > 0'),
    ('grad_clip_norm', -1.0, r'optim\.grad_clip_norm must be >= 0'),
    ('base_batch_size', 0, r'optim\.base_batch_size must be an int > 0 or '
                           r'None, got 0'),
    ('warmup_epochs', -1.0, r'optim\.warmup_epochs must be >= 0 or None'),
    ('warmup_epochs', 2.0, r'set exactly one of optim\.warmup_steps and '
                           r'optim\.warmup_epochs, got 0 and 2\.0'),
    ('warmup_steps', None, r'set exactly one of optim\.warmup_steps and '
                           r'optim\.warmup_epochs, got None and None'),
])
def test_bad_config_fields_raise(field, value, message):
  config = make_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    optim.create_optimizer(config, 100, small_params(), steps_per_epoch=10)
  with pytest.raises(ValueError, match=message):
    optim.create_learning_rate_schedule(config, 100, 10)


def test_bad_schedule_arguments_raise():
  with pytest.raises(ValueError, match='num_train_steps must be a positive'):
    optim.create_learning_rate_schedule(make_config(), 0, 10)
  with pytest.raises(ValueError, match='steps_per_epoch must be a positive'):
    optim.create_learning_rate_schedule(
        make_config(schedule='exponential'), 100)
  with pytest.raises(ValueError, match=r'the warm-up \(100 steps\) must be '
                                       r'shorter than num_train_steps \(100\)'):
    optim.create_learning_rate_schedule(
        make_config(schedule='cosine', warmup_steps=100), 100)
  with pytest.raises(ValueError, match='batch_size must be a positive int '
                                       'with optim.base_batch_size'):
    optim.create_learning_rate_schedule(make_config(base_batch_size=256), 100)
  with pytest.raises(ValueError, match='steps_per_epoch must be a positive'):
    optim.create_learning_rate_schedule(
        make_config(warmup_steps=None, warmup_epochs=1.0), 100)


def test_bad_loss_arguments_raise():
  logits, labels = jnp.zeros((2, 3)), jnp.asarray([0, 1])
  with pytest.raises(ValueError, match=r'label_smoothing must be in \[0, 1\)'):
    optim.cross_entropy_loss(logits, labels, 3, 1.0)
  with pytest.raises(ValueError, match='num_classes=4'):
    optim.cross_entropy_loss(logits, labels, 4, 0.1)
