"""Every depthwise implementation against the reference (XLA's grouped conv),
forward and both gradients; and how 'auto' resolves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax import depthwise
from mobilenet_jax import layers

# 'auto' is one of these on every backend (test_auto_* below).
ALTERNATIVES = sorted(set(depthwise.IMPLEMENTATIONS) - {'grouped', 'auto'})
RTOL = 1e-5


def _close(actual, expected):
  """Relative 1e-5 of the reference's largest magnitude (elementwise
  relative error is meaningless where the reference is near zero)."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=RTOL,
                             atol=RTOL * np.abs(expected).max())


@functools.partial(jax.jit, static_argnums=(0, 3))
def _outputs_and_grads(impl, x, kernel, strides, r):
  """y and (dL/dx, dL/dw) for L = sum(y * r)."""
  y, vjp = jax.vjp(
      lambda x, w: depthwise.depthwise_conv(x, w, strides, impl), x, kernel)
  return y, vjp(r)


@pytest.mark.parametrize('impl', ALTERNATIVES)
# Odd and even sides on both axes: 'SAME' pads them differently.
@pytest.mark.parametrize('shape', [(2, 9, 10, 8), (2, 16, 15, 4)])
@pytest.mark.parametrize('kernel_size', [3, 5])
@pytest.mark.parametrize('strides', [1, 2])
def test_matches_grouped_forward_and_gradients(impl, shape, kernel_size,
                                               strides):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape, np.float32)
  kernel = rng.standard_normal((kernel_size, kernel_size, 1, shape[-1]),
                               np.float32)
  out_shape = (shape[0], -(-shape[1] // strides), -(-shape[2] // strides),
               shape[3])
  r = rng.standard_normal(out_shape, np.float32)
  y_ref, (dx_ref, dw_ref) = _outputs_and_grads('grouped', x, kernel, strides,
                                               r)
  y, (dx, dw) = _outputs_and_grads(impl, x, kernel, strides, r)
  assert y.shape == out_shape
  assert dx.shape == x.shape and dw.shape == kernel.shape
  _close(y, y_ref)
  _close(dx, dx_ref)
  _close(dw, dw_ref)


@pytest.mark.parametrize('impl', ALTERNATIVES)
def test_matches_grouped_under_jit_and_second_order(impl):
  """The custom VJPs must survive jit and differentiate again (a gradient
  penalty or a Hessian-vector product goes through the backward pass)."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 9, 9, 4), np.float32)
  kernel = rng.standard_normal((3, 3, 1, 4), np.float32)

  def grad_norm(impl):
    def loss(x, w):
      return jnp.sum(jnp.sin(depthwise.depthwise_conv(x, w, 2, impl)))
    return jax.jit(lambda x, w: jnp.sum(jax.grad(loss)(x, w) ** 2))

  _close(grad_norm(impl)(x, kernel), grad_norm('grouped')(x, kernel))
  _close(jax.grad(grad_norm(impl), 1)(x, kernel),
         jax.grad(grad_norm('grouped'), 1)(x, kernel))


@pytest.mark.parametrize('impl', ALTERNATIVES)
def test_bfloat16_keeps_dtypes_and_stays_close(impl):
  """bfloat16 in, bfloat16 out and gradients; within bfloat16 rounding
  (8 bits of mantissa) of the float32 reference."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 9, 10, 8), np.float32)
  kernel = rng.standard_normal((3, 3, 1, 8), np.float32)
  r = rng.standard_normal((2, 5, 5, 8), np.float32)
  to16 = lambda a: jnp.asarray(a, jnp.bfloat16)
  expected = _outputs_and_grads('grouped', x, kernel, 2, r)
  actual = _outputs_and_grads(impl, to16(x), to16(kernel), 2, to16(r))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), e, rtol=0,
                               atol=0.05 * np.abs(e).max())


def test_auto_keeps_grouped_on_tpu():
  # DESIGN.md: feature_group_count is native on TPU; keep it the default.
  assert depthwise.resolve('auto', 'tpu') == 'grouped'


@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu', 'unknown'])
def test_auto_resolves_to_a_concrete_implementation(backend):
  chosen = depthwise.resolve('auto', backend)
  assert chosen in depthwise.IMPLEMENTATIONS and chosen != 'auto'


def test_auto_follows_the_default_backend_and_names_pass_through():
  assert (depthwise.resolve('auto') ==
          depthwise.resolve('auto', jax.default_backend()))
  for name in depthwise.IMPLEMENTATIONS:
    if name != 'auto':
      assert depthwise.resolve(name) == name


def test_auto_layer_matches_grouped_layer():
  x = np.random.default_rng(3).standard_normal((2, 16, 16, 4), np.float32)
  grouped = layers.DepthwiseConv(3, 2, 'grouped')
  auto = layers.DepthwiseConv(3, 2, 'auto')
  variables = grouped.init(jax.random.PRNGKey(4), x)
  _close(auto.apply(variables, x), grouped.apply(variables, x))


def test_unknown_implementation_is_rejected():
  with pytest.raises(ValueError, match='depthwise_impl'):
    depthwise.depthwise_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2)),
                             1, 'winograd')
