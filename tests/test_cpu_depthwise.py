"""The cpu op set's depthwise convolution against the reference's (XLA's
grouped convolution, `feature_group_count` = channels), forward and both
gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax import lax

from mobilenet_jax.cpu import depthwise

RTOL = 1e-5


def _grouped(x, kernel, strides):
  """The reference: what nn.Conv(feature_group_count=C, padding='SAME')
  computes."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


IMPLS = {'grouped': _grouped, 'cpu': depthwise.depthwise_conv}


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
      lambda x, w: IMPLS[impl](x, w, strides), x, kernel)
  return y, vjp(r)


# Odd and even sides on both axes: 'SAME' pads them differently.
@pytest.mark.parametrize('shape', [(2, 9, 10, 8), (2, 16, 15, 4)])
@pytest.mark.parametrize('kernel_size', [3, 5])
@pytest.mark.parametrize('strides', [1, 2])
def test_matches_grouped_forward_and_gradients(shape, kernel_size, strides):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape, np.float32)
  kernel = rng.standard_normal((kernel_size, kernel_size, 1, shape[-1]),
                               np.float32)
  out_shape = (shape[0], -(-shape[1] // strides), -(-shape[2] // strides),
               shape[3])
  r = rng.standard_normal(out_shape, np.float32)
  y_ref, (dx_ref, dw_ref) = _outputs_and_grads('grouped', x, kernel, strides,
                                               r)
  y, (dx, dw) = _outputs_and_grads('cpu', x, kernel, strides, r)
  assert y.shape == out_shape
  assert dx.shape == x.shape and dw.shape == kernel.shape
  _close(y, y_ref)
  _close(dx, dx_ref)
  _close(dw, dw_ref)


def test_matches_grouped_under_jit_and_second_order():
  """The custom VJPs must survive jit and differentiate again (a gradient
  penalty or a Hessian-vector product goes through the backward pass)."""
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 9, 9, 4), np.float32)
  kernel = rng.standard_normal((3, 3, 1, 4), np.float32)

  def grad_norm(impl):
    def loss(x, w):
      return jnp.sum(jnp.sin(IMPLS[impl](x, w, 2)))
    return jax.jit(lambda x, w: jnp.sum(jax.grad(loss)(x, w) ** 2))

  _close(grad_norm('cpu')(x, kernel), grad_norm('grouped')(x, kernel))
  _close(jax.grad(grad_norm('cpu'), 1)(x, kernel),
         jax.grad(grad_norm('grouped'), 1)(x, kernel))


def test_bfloat16_keeps_dtypes_and_stays_close():
  """bfloat16 in, bfloat16 out and gradients; within bfloat16 rounding
  (8 bits of mantissa) of the float32 reference."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 9, 10, 8), np.float32)
  kernel = rng.standard_normal((3, 3, 1, 8), np.float32)
  r = rng.standard_normal((2, 5, 5, 8), np.float32)
  to16 = lambda a: jnp.asarray(a, jnp.bfloat16)
  expected = _outputs_and_grads('grouped', x, kernel, 2, r)
  actual = _outputs_and_grads('cpu', to16(x), to16(kernel), 2, to16(r))
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), e, rtol=0,
                               atol=0.05 * np.abs(e).max())
