"""The cpu op set's BatchNorm against flax.linen.BatchNorm and autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.cpu import batch_norm

MOMENTUM = 0.9
EPS = 1e-3


def _ours(train, dtype=jnp.float32):
  return batch_norm.BatchNorm(use_running_average=not train,
                              momentum=MOMENTUM, epsilon=EPS, dtype=dtype)


def _flax(train, dtype=jnp.float32):
  return nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM,
                      epsilon=EPS, dtype=dtype)


def _inputs(seed, shape=(3, 5, 4, 6)):
  """An input far from zero mean and unit variance, and random variables."""
  rng = np.random.default_rng(seed)
  x = (2.5 * rng.normal(size=shape) + 1.5).astype(np.float32)
  c = shape[-1]
  variables = {
      'params': {'scale': rng.uniform(0.5, 2.0, c).astype(np.float32),
                 'bias': rng.normal(size=c).astype(np.float32)},
      'batch_stats': {'mean': rng.normal(size=c).astype(np.float32),
                      'var': rng.uniform(0.5, 2.0, c).astype(np.float32)}}
  return x, variables


def test_variables_match_flax():
  x = jnp.zeros((2, 3, 3, 5))
  ours = _ours(train=True).init(jax.random.key(0), x)
  theirs = _flax(train=True).init(jax.random.key(0), x)
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), ours)
          == jax.tree.map(lambda a: (a.shape, a.dtype), theirs))
  # Initialising in training mode leaves the running statistics fresh.
  np.testing.assert_array_equal(ours['batch_stats']['mean'], np.zeros(5))
  np.testing.assert_array_equal(ours['batch_stats']['var'], np.ones(5))


def test_training_forward_and_running_statistics_match_flax():
  x, variables = _inputs(0)

  def apply(module):
    return jax.jit(lambda v, x: module.apply(v, x, mutable=['batch_stats']))(
        variables, x)

  y, stats = apply(_ours(train=True))
  y_flax, stats_flax = apply(_flax(train=True))
  np.testing.assert_allclose(y, y_flax, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               stats, stats_flax)
  # Independently: each channel of y has mean `bias` and std ~`scale`.
  np.testing.assert_allclose(y.mean((0, 1, 2)), variables['params']['bias'],
                             atol=1e-5)
  batch_mean = x.mean((0, 1, 2))
  np.testing.assert_allclose(
      stats['batch_stats']['mean'],
      MOMENTUM * variables['batch_stats']['mean']
      + (1 - MOMENTUM) * batch_mean, rtol=1e-5)


def test_inference_matches_flax():
  x, variables = _inputs(1)
  y = jax.jit(_ours(train=False).apply)(variables, x)
  y_flax = jax.jit(_flax(train=False).apply)(variables, x)
  np.testing.assert_allclose(y, y_flax, rtol=1e-6, atol=1e-6)
  stats = variables['batch_stats']
  expected = ((x - stats['mean']) / np.sqrt(stats['var'] + EPS)
              * variables['params']['scale'] + variables['params']['bias'])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(3, 5, 4, 6), (2, 1, 1, 3)])
def test_gradients_match_flax_autodiff(shape):
  x, variables = _inputs(2, shape)
  g = np.random.default_rng(3).normal(size=shape).astype(np.float32)

  def vjp(module):
    def f(params, x):
      y, _ = module.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x,
          mutable=['batch_stats'])
      return y
    return jax.jit(lambda p, x: jax.vjp(f, p, x)[1](g))(
        variables['params'], x)

  (dparams, dx), (dparams_flax, dx_flax) = (vjp(_ours(train=True)),
                                            vjp(_flax(train=True)))
  np.testing.assert_allclose(dx, dx_flax, rtol=1e-4, atol=1e-5)
  for name in ('scale', 'bias'):
    np.testing.assert_allclose(dparams[name], dparams_flax[name], rtol=1e-5,
                               atol=1e-5)


def test_gradients_through_statistics_match_autodiff():
  # Cotangents on the returned mean and var too: the hand-written backward
  # against autodiff of the same forward pass.
  x, variables = _inputs(4)
  scale, bias = variables['params']['scale'], variables['params']['bias']
  rng = np.random.default_rng(5)
  cotangents = (rng.normal(size=x.shape).astype(np.float32),
                rng.normal(size=6).astype(np.float32),
                rng.normal(size=6).astype(np.float32))

  def autodiff_forward(x, scale, bias):
    return batch_norm._normalize_batch_forward(x, scale, bias, EPS)[0]

  def grads(f):
    return jax.jit(lambda x, s, b: jax.vjp(f, x, s, b)[1](cotangents))(
        x, scale, bias)

  ours = grads(lambda x, s, b: batch_norm.normalize_batch(x, s, b, EPS))
  for a, b in zip(ours, grads(autodiff_forward)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_matches_flax():
  x, variables = _inputs(6)
  x = x.astype(jnp.bfloat16)
  g = np.random.default_rng(7).normal(size=x.shape).astype(jnp.bfloat16)

  def run(module):
    def f(params, x):
      y, stats = module.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x,
          mutable=['batch_stats'])
      return y, stats
    y, pullback, stats = jax.vjp(f, variables['params'], x, has_aux=True)
    return y, stats, pullback(g)

  y, stats, (dparams, dx) = jax.jit(lambda: run(_ours(True, jnp.bfloat16)))()
  y_f, stats_f, (dparams_f, dx_f) = jax.jit(
      lambda: run(_flax(True, jnp.bfloat16)))()
  assert y.dtype == dx.dtype == jnp.bfloat16
  assert stats['batch_stats']['var'].dtype == jnp.float32
  # Statistics are float32 from the same bfloat16 input: equal to rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               stats, stats_f)
  f32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_allclose(f32(y), f32(y_f), rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(f32(dx), f32(dx_f), rtol=5e-2, atol=5e-2)
  for name in ('scale', 'bias'):
    np.testing.assert_allclose(dparams[name], dparams_f[name], rtol=2e-2,
                               atol=2e-2)


def test_rejects_non_nhwc_input():
  with pytest.raises(ValueError, match='NHWC'):
    _ours(train=True).init(jax.random.key(0), jnp.zeros((4, 5)))


def _pointwise_inputs(seed, shape, features):
  """Inputs far from zero mean, a (K, C) kernel, scale and bias."""
  rng = np.random.default_rng(seed)
  x = (2.5 * rng.normal(size=shape) + 1.5).astype(np.float32)
  kernel = (rng.normal(size=(shape[-1], features))
            / np.sqrt(shape[-1])).astype(np.float32)
  scale = rng.uniform(0.5, 2.0, features).astype(np.float32)
  bias = rng.normal(size=features).astype(np.float32)
  return x, kernel, scale, bias


@pytest.mark.parametrize('shape,features', [((3, 5, 4, 6), 12),
                                            ((2, 9, 7, 16), 96)])
def test_pointwise_normalization_matches_convolution_then_batchnorm(
    shape, features):
  x, kernel, scale, bias = _pointwise_inputs(8, shape, features)
  z, mean, var = jax.jit(lambda *a: batch_norm.normalize_pointwise_batch(
      *a, EPS))(x, kernel, scale, bias)
  y = np.einsum('nhwk,kc->nhwc', x.astype(np.float64), kernel)
  mean64, var64 = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  np.testing.assert_allclose(mean, mean64, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, var64, rtol=1e-5)
  np.testing.assert_allclose(
      z, (y - mean64) / np.sqrt(var64 + EPS) * scale + bias, rtol=1e-4,
      atol=1e-4)

  # Gradients with cotangents on z, mean and var: the closed form against
  # autodiff of the two layers it replaces.
  rng = np.random.default_rng(9)
  cotangents = (rng.normal(size=z.shape).astype(np.float32),
                rng.normal(size=features).astype(np.float32),
                rng.normal(size=features).astype(np.float32))

  def two_layers(x, kernel, scale, bias):
    return batch_norm._normalize_batch_forward(
        jnp.einsum('nhwk,kc->nhwc', x, kernel), scale, bias, EPS)[0]

  def grads(f):
    return jax.jit(lambda *a: jax.vjp(f, *a)[1](cotangents))(
        x, kernel, scale, bias)

  ours = grads(lambda *a: batch_norm.normalize_pointwise_batch(*a, EPS))
  for a, b in zip(ours, grads(two_layers)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_pointwise_kernel_module_in_both_modes():
  x, kernel, _, _ = _pointwise_inputs(10, (3, 5, 4, 6), 12)
  y = jnp.einsum('nhwk,kc->nhwc', x, kernel)
  variables = _ours(train=True).init(jax.random.key(0), y)
  for train in (True, False):
    got = _ours(train).apply(variables, x, pointwise_kernel=kernel,
                             mutable=['batch_stats'])
    want = _ours(train).apply(variables, y, mutable=['batch_stats'])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-5, atol=1e-5), got, want)
  with pytest.raises(ValueError, match='float32 only, got dtype bfloat16'):
    _ours(True, jnp.bfloat16).apply(variables, x, pointwise_kernel=kernel,
                                    mutable=['batch_stats'])
