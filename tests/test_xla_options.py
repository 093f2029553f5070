"""The steps' XLA compiler options: CPU fast math that keeps NaN and Inf,
LLVM at -O1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax import layers
from mobilenet_jax import models
from mobilenet_jax import optim
from mobilenet_jax import state as state_lib
from mobilenet_jax import xla_options
from mobilenet_jax.cpu import batch_norm
from mobilenet_jax.cpu import depthwise


def _loss_and_grads_fn(num_classes=4):
  """(fn(params, batch) -> (loss, grads), params) of a tiny V2 in training
  mode with the `cpu` op set (the kernels the options are for)."""
  model = models.create_model('mobilenet_v2', num_classes=num_classes,
                              alpha=0.35, ops='cpu')
  variables = state_lib.init_variables(model, jax.random.PRNGKey(0), 32)

  def loss_fn(params, batch):
    logits, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        batch['image'], train=True, mutable=['batch_stats'],
        rngs={'dropout': jax.random.PRNGKey(1)})
    return optim.cross_entropy_loss(logits, batch['label'], num_classes, 0.1)

  return jax.value_and_grad(loss_fn), variables['params']


def _batch(rng, size=4):
  return {'image': jnp.asarray(rng.normal(size=(size, 32, 32, 3)),
                               jnp.float32),
          'label': jnp.arange(size) % 4}


def test_cpu_gets_fast_math_with_nans_and_infs_kept_other_backends_none():
  options = xla_options.step_compiler_options('cpu')
  assert options['xla_cpu_enable_fast_math'] is True
  for kept in ('nans', 'infs', 'division', 'functions'):
    assert options[f'xla_cpu_fast_math_honor_{kept}'] is True
  assert options['xla_backend_optimization_level'] == 1
  assert xla_options.step_compiler_options('tpu') == {}
  assert xla_options.step_compiler_options('gpu') == {}
  options.clear()  # A copy: the module's stays as it was.
  assert xla_options.step_compiler_options('cpu') == xla_options.CPU_OPTIONS


@pytest.mark.parametrize('strides', [1, 2])
def test_relu6_depthwise_batchnorm_gradients_match_strict_ieee(strides):
  """The fusion the options are for (ReLU6's mask in the depthwise
  convolution's backward pass) and BatchNorm's reductions: the same values
  and gradients as a strict compilation, to float32 rounding."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 18, 18, 24)) * 4, jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 24)), jnp.float32)
  scale = jnp.asarray(rng.uniform(0.5, 2, size=24), jnp.float32)
  bias = jnp.asarray(rng.normal(size=24), jnp.float32)

  def loss(x, kernel, scale, bias):
    y = depthwise.depthwise_conv(layers.relu6(x), kernel, strides)
    y, _, _ = batch_norm.normalize_batch(y, scale, bias, 1e-3)
    return jnp.sum(jnp.sin(y))

  fn = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
  strict = jax.jit(fn)(x, kernel, scale, bias)
  fast = jax.jit(fn, compiler_options=xla_options.step_compiler_options(
      'cpu'))(x, kernel, scale, bias)
  np.testing.assert_allclose(fast[0], strict[0], rtol=1e-5)
  for got, want in zip(fast[1], strict[1]):
    np.testing.assert_allclose(got, want, rtol=1e-5,
                               atol=1e-6 * np.abs(want).max())


@pytest.mark.slow
def test_a_nan_or_inf_input_still_reaches_the_loss():
  fn, params = _loss_and_grads_fn()
  step = jax.jit(fn, compiler_options=xla_options.step_compiler_options('cpu'))
  for bad in (np.nan, np.inf):
    batch = _batch(np.random.default_rng(0))
    batch['image'] = batch['image'].at[1, 5, 7, 2].set(bad)
    loss, grads = step(params, batch)
    assert np.isnan(loss)
    assert np.isnan(grads['classifier']['kernel']).any()
