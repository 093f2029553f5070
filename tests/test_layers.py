"""Layers of both op sets against independent references: numpy convolutions
with TF 'SAME' padding and their closed-form gradients, the activation and
rounding formulas of the papers, and squeeze-and-excite written out in numpy.
(The cpu kernels' own tests, against the reference layers: test_cpu_*.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from mobilenet_jax import layers
from mobilenet_jax import models
from mobilenet_jax import ops
from mobilenet_jax.cpu import depthwise
from mobilenet_jax.cpu import layers as cpu_layers

OPS = sorted(ops.OP_SETS)


def _reference_depthwise(x, w, s):
  """The reference op set's depthwise convolution."""
  return nn.Conv(x.shape[-1], w.shape[:2], s, padding='SAME',
                 feature_group_count=x.shape[-1], use_bias=False).apply(
                     {'params': {'kernel': w}}, x)


DEPTHWISE = {'reference': _reference_depthwise,
             'cpu': depthwise.depthwise_conv}


def _same_pads(size, k, s):
  """TF 'SAME' (before, after): out = ceil(size / s), odd pixel after."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def _pad_same(x, k, s):
  (t, b), (l, r) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
  return np.pad(x, [(0, 0), (t, b), (l, r), (0, 0)])


def _ref_depthwise(x, w, s):
  """y[n,i,j,c] = sum_{a,b} xpad[n, s*i+a, s*j+b, c] * w[a,b,c], by loops."""
  k = w.shape[0]
  xp = _pad_same(x, k, s)
  out_h, out_w = -(-x.shape[1] // s), -(-x.shape[2] // s)
  y = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      for a in range(k):
        for b in range(k):
          y[:, i, j, :] += xp[:, s * i + a, s * j + b, :] * w[a, b, :]
  return y


def _ref_conv(x, w, s):
  """Full 'SAME' convolution with a (k, k, C_in, C_out) kernel, by windows."""
  k = w.shape[0]
  xp = _pad_same(x, k, s)
  out_h, out_w = -(-x.shape[1] // s), -(-x.shape[2] // s)
  y = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
  for a in range(k):
    for b in range(k):
      window = xp[:, a:a + s * (out_h - 1) + 1:s, b:b + s * (out_w - 1) + 1:s]
      y += np.einsum('nhwc,cd->nhwd', window, w[a, b])
  return y


def _ref_depthwise_input_grad(g, w, x_shape, s):
  """dL/dX: per-channel full correlation of the zero-inserted dL/dY with the
  flipped kernel (a transposed convolution), cropped to the unpadded input."""
  _, h, wd, _ = x_shape
  k = w.shape[0]
  n, out_h, out_w, c = g.shape
  dilated = np.zeros((n, (out_h - 1) * s + 1, (out_w - 1) * s + 1, c))
  dilated[:, ::s, ::s] = g
  gp = np.pad(dilated, [(0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)])
  flipped = w[::-1, ::-1]
  full_h, full_w = gp.shape[1] - k + 1, gp.shape[2] - k + 1
  dxp = np.zeros((n, full_h, full_w, c))
  for a in range(k):
    for b in range(k):
      dxp += gp[:, a:a + full_h, b:b + full_w] * flipped[a, b]
  (top, _), (left, _) = _same_pads(h, k, s), _same_pads(wd, k, s)
  # Padded rows/columns past the last window get no gradient.
  dxp = np.pad(dxp, [(0, 0), (0, max(0, top + h - full_h)),
                     (0, max(0, left + wd - full_w)), (0, 0)])
  return dxp[:, top:top + h, left:left + wd]


def _ref_depthwise_kernel_grad(x, g, k, s):
  """dL/dW[a,b,c] = sum_{n,i,j} xpad[n, s*i+a, s*j+b, c] * dL/dY[n,i,j,c]."""
  xp = _pad_same(x, k, s)
  _, out_h, out_w, _ = g.shape
  dw = np.zeros((k, k, x.shape[3]))
  for a in range(k):
    for b in range(k):
      window = xp[:, a:a + s * (out_h - 1) + 1:s, b:b + s * (out_w - 1) + 1:s]
      dw[a, b] = np.einsum('nhwc,nhwc->c', window, g)
  return dw


# (kernel, stride, (height, width)): each input has an even and an odd side,
# so each stride-2 case has one asymmetric and one symmetric 'SAME' padding.
CASES = [(3, 1, (8, 7)), (3, 2, (8, 7)), (5, 1, (7, 8)), (5, 2, (8, 7))]


def _forward_and_vjp(impl):
  """All CASES in one jitted function (one compile per implementation):
  returns [(y, dL/dx, dL/dw)] for cotangents gs."""

  @jax.jit
  def run(xs, ws, gs):
    results = []
    for (_, s, _), x, w, g in zip(CASES, xs, ws, gs):
      y, vjp = jax.vjp(
          lambda x, w, s=s: DEPTHWISE[impl](x, w, s), x, w)
      results.append((y, *vjp(g)))
    return results

  return run


@pytest.mark.parametrize('impl', OPS)
def test_depthwise_and_gradients_match_numpy(impl):
  rng = np.random.default_rng(0)
  xs, ws, gs = [], [], []
  for k, s, (h, w) in CASES:
    xs.append(rng.normal(size=(2, h, w, 3)).astype(np.float32))
    ws.append(rng.normal(size=(k, k, 1, 3)).astype(np.float32))
    gs.append(rng.normal(size=(2, -(-h // s), -(-w // s), 3)).astype(
        np.float32))
  results = _forward_and_vjp(impl)(xs, ws, gs)
  for (k, s, size), x, w, g, (y, dx, dw) in zip(CASES, xs, ws, gs, results):
    case = f'{impl}: kernel {k}, stride {s}, size {size}'
    np.testing.assert_allclose(y, _ref_depthwise(x, w[:, :, 0], s),
                               rtol=1e-5, atol=1e-5, err_msg=case)
    np.testing.assert_allclose(
        dx, _ref_depthwise_input_grad(g, w[:, :, 0], x.shape, s),
        rtol=1e-5, atol=1e-4, err_msg=case)
    np.testing.assert_allclose(
        dw[:, :, 0], _ref_depthwise_kernel_grad(x, g, k, s),
        rtol=1e-5, atol=1e-4, err_msg=case)


@pytest.mark.parametrize('impl', OPS)
def test_depthwise_check_grads_float64(impl):
  def f(x, w):  # both strides at once
    return [DEPTHWISE[impl](x, w, 1), DEPTHWISE[impl](x, w, 2)]

  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(1, 7, 6, 2)))
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 2)))
    assert x.dtype == jnp.float64
    # JAX has no forward mode for custom_vjp functions: the cpu kernel's.
    modes = ('fwd', 'rev') if impl == 'reference' else ('rev',)
    check_grads(jax.jit(f), (x, w), order=1, modes=modes)


EPS = 1e-3  # BatchNorm epsilon of the TF references


def _conv_bn_variables(module, x, seed):
  """A random kernel of the shape `module.init` declares (checked with
  eval_shape, nothing compiled) and a fresh BatchNorm: scale 1, bias 0,
  mean 0, variance 1."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  shape = shapes['params']['conv']['kernel'].shape
  kernel = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  c = shape[-1]
  variables = {
      'params': {'conv': {'kernel': kernel},
                 'bn': {'scale': np.ones(c, np.float32),
                        'bias': np.zeros(c, np.float32)}},
      'batch_stats': {'bn': {'mean': np.zeros(c, np.float32),
                             'var': np.ones(c, np.float32)}}}
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  return variables, kernel


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('strides', [1, 2])
def test_pointwise_conv_matches_einsum(op_set, strides):
  # An even height and an odd width.
  x = np.random.default_rng(4).normal(size=(2, 8, 7, 3)).astype(np.float32)
  module = ops.OP_SETS[op_set].conv_bn(features=5, kernel_size=1,
                                       strides=strides, activation='identity')
  variables, kernel = _conv_bn_variables(module, x, 0)
  assert kernel.shape == (1, 1, 3, 5)
  # A 1x1 'SAME' conv of stride s reads pixels 0, s, 2s, ... (no padding).
  expected = np.einsum('nhwc,cd->nhwd', x[:, ::strides, ::strides],
                       kernel[0, 0])
  # Eval-mode BatchNorm with mean 0, variance 1 divides by sqrt(1 + eps).
  np.testing.assert_allclose(jax.jit(module.apply)(variables, x),
                             expected / np.sqrt(1 + EPS), rtol=1e-5,
                             atol=1e-5)


# Wider and narrower outputs: the weight gradient's two dot orders.
@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('features', [4, 2])
def test_pointwise_gradients_match_closed_form(op_set, features):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  module = ops.OP_SETS[op_set].conv_bn(features=features, kernel_size=1,
                                       activation='identity')
  variables, kernel = _conv_bn_variables(module, x, 1)
  g = rng.normal(size=(2, 5, 5, features)).astype(np.float32)

  def conv(params, x):
    return module.apply({'params': params,
                         'batch_stats': variables['batch_stats']}, x)

  dparams, dx = jax.jit(lambda p, x, g: jax.vjp(conv, p, x)[1](g))(
      variables['params'], x, g)
  scale = 1 / np.sqrt(1 + EPS)
  np.testing.assert_allclose(
      dx, scale * np.einsum('nhwd,cd->nhwc', g, kernel[0, 0]), rtol=1e-5,
      atol=1e-5)
  np.testing.assert_allclose(dparams['conv']['kernel'][0, 0],
                             scale * np.einsum('nhwc,nhwd->cd', x, g),
                             rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('op_set', OPS)
def test_full_conv_stride2_same_padding(op_set):
  # The stems' 3x3 stride-2 conv: TF 'SAME' puts the odd padding after.
  x = np.random.default_rng(6).normal(size=(2, 8, 7, 3)).astype(np.float32)
  module = ops.OP_SETS[op_set].conv_bn(features=4, kernel_size=3, strides=2,
                                       activation='identity')
  variables, kernel = _conv_bn_variables(module, x, 2)
  assert kernel.shape == (3, 3, 3, 4)
  np.testing.assert_allclose(jax.jit(module.apply)(variables, x),
                             _ref_conv(x, kernel, 2) / np.sqrt(1 + EPS),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('op_set', OPS)
def test_conv_bn_depthwise(op_set):
  # A depthwise ConvBN keeps the width (`features` ignored).
  x = np.random.default_rng(9).normal(size=(2, 8, 7, 6)).astype(np.float32)
  module = ops.OP_SETS[op_set].conv_bn(features=99, kernel_size=5, strides=2,
                                       depthwise=True, activation='identity')
  variables, kernel = _conv_bn_variables(module, x, 3)
  assert kernel.shape == (5, 5, 1, 6)
  np.testing.assert_allclose(
      jax.jit(module.apply)(variables, x),
      _ref_depthwise(x, kernel[:, :, 0], 2) / np.sqrt(1 + EPS),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('kernel_size', [3, 5])
def test_depthwise_init_has_keras_scale(op_set, kernel_size):
  # Keras' DepthwiseConv2D default, glorot_uniform on a (k, k, C, 1) kernel:
  # variance 2 / (fan_in + fan_out) = 2 / (k*k*C + k*k).
  channels = 512
  module = ops.OP_SETS[op_set].conv_bn(channels, kernel_size, depthwise=True)
  variables = module.init(jax.random.key(0),
                          np.zeros((1, 8, 8, channels), np.float32))
  kernel = np.asarray(variables['params']['conv']['kernel'])
  assert kernel.shape == (kernel_size, kernel_size, 1, channels)
  keras_std = np.sqrt(2 / (kernel_size**2 * (channels + 1)))
  assert kernel.std() == pytest.approx(keras_std, rel=0.05)


# 5 features from 3 channels: convolution, then BatchNorm; 8 (at least
# twice the input's): in the cpu op set, the two folded together in training
# (cpu.batch_norm.normalize_pointwise_batch).
@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('features', [5, 8])
def test_conv_bn_train_mode_normalises_with_batch_statistics(op_set,
                                                             features):
  x = np.random.default_rng(7).normal(2.0, 3.0, (4, 6, 6, 3)).astype(
      np.float32)
  module = ops.OP_SETS[op_set].conv_bn(features=features, kernel_size=1,
                                       activation='identity', bn_momentum=0.9)
  variables, kernel = _conv_bn_variables(module, x, 4)
  y, state = jax.jit(lambda v, x: module.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, x)
  conv = np.einsum('nhwc,cd->nhwd', x.astype(np.float64), kernel[0, 0])
  mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  np.testing.assert_allclose(y, (conv - mean) / np.sqrt(var + EPS),
                             rtol=1e-4, atol=1e-4)
  # Running averages: momentum * old + (1 - momentum) * batch statistic.
  stats = state['batch_stats']['bn']
  np.testing.assert_allclose(stats['mean'], 0.1 * mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * var, rtol=1e-4)


_GRID = np.linspace(-7, 7, 281).astype(np.float32)  # step 0.05, hits +-3, 0


def test_relu6():
  expected = np.where(_GRID < 0, 0, np.where(_GRID > 6, 6, _GRID))
  np.testing.assert_array_equal(layers.relu6(_GRID), expected)
  assert layers.ACTIVATIONS['relu6'] is layers.relu6


def test_relu6_gradient_is_tensorflows():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  grid = np.concatenate([_GRID, [0.0, 6.0]]).astype(np.float32)
  ones = np.ones_like(grid)
  expected = tf.raw_ops.Relu6Grad(gradients=ones, features=grid).numpy()
  np.testing.assert_array_equal(
      jax.vmap(jax.grad(layers.relu6))(grid), expected)
  assert expected[-2] == expected[-1] == 0  # 0 at both kinks


def test_hard_sigmoid():
  # V3 paper section 5.2: ReLU6(x + 3) / 6, i.e. 0 below -3, 1 above 3.
  expected = np.piecewise(_GRID, [_GRID <= -3, _GRID >= 3],
                          [0, 1, lambda x: (x + 3) / 6])
  np.testing.assert_allclose(layers.hard_sigmoid(_GRID), expected, atol=1e-6)
  assert float(layers.hard_sigmoid(0.0)) == 0.5


def test_hard_swish():
  # V3 paper equation (2): x * ReLU6(x + 3) / 6.
  expected = np.piecewise(_GRID, [_GRID <= -3, _GRID >= 3],
                          [0, lambda x: x, lambda x: x * (x + 3) / 6])
  np.testing.assert_allclose(layers.hard_swish(_GRID), expected, atol=1e-6)
  np.testing.assert_allclose(layers.hard_swish(1.0), 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(layers.hard_swish(-1.0), -1 / 3, rtol=1e-6)
  inside = _GRID[(_GRID > -2.99) & (_GRID < 2.99)]
  np.testing.assert_allclose(jax.vmap(jax.grad(layers.hard_swish))(inside),
                             (2 * inside + 3) / 6, rtol=1e-5, atol=1e-6)
  assert layers.ACTIVATIONS['hard_swish'] is layers.hard_swish


def _make_divisible_formula(v):
  """The brief's rule, written independently."""
  r = max(8, int(v + 4) // 8 * 8)
  return r + 8 if r < 0.9 * v else r


@pytest.mark.parametrize('value, expected', [
    (11.2, 16),     # 32 * 0.35: rounds to 8, below 0.9 * 11.2, so + 8
    (3, 8),         # never below the divisor
    (1280 * 1.4, 1792),
    (32 * 0.5, 16),
    (16 * 0.75, 16),  # 12 rounds half up
    (20, 24),
    (17.7, 16),     # rounds down: 16 is still >= 0.9 * 17.7
    (96 * 0.35, 32),
    (0.1, 8),
])
def test_make_divisible_edge_cases(value, expected):
  assert layers.make_divisible(value) == expected


def test_make_divisible_matches_formula():
  values = [c * a for c in range(1, 1300, 7)
            for a in (0.1, 0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 2.0)]
  for v in values:
    got = layers.make_divisible(v)
    assert got == _make_divisible_formula(v), v
    assert got % 8 == 0 and got >= 0.9 * v


@pytest.mark.parametrize('op_set', OPS)
def test_squeeze_excite_matches_numpy(op_set):
  rng = np.random.default_rng(8)
  x = rng.normal(size=(2, 5, 5, 16)).astype(np.float32)
  module = ops.OP_SETS[op_set].squeeze_excite(squeeze_features=8)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  assert shapes['reduce']['kernel'].shape == (1, 1, 16, 8)
  assert shapes['expand']['kernel'].shape == (1, 1, 8, 16)
  # Random kernels and biases of those shapes.
  p = jax.tree.map(
      lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  s = x.mean(axis=(1, 2))
  z = np.maximum(s @ p['reduce']['kernel'][0, 0] + p['reduce']['bias'], 0)
  e = z @ p['expand']['kernel'][0, 0] + p['expand']['bias']
  gate = np.clip(e + 3, 0, 6) / 6
  expected = x * gate[:, None, None, :]
  np.testing.assert_allclose(jax.jit(module.apply)({'params': p}, x),
                             expected, rtol=1e-5, atol=1e-5)


# Float32 weight gradients under bfloat16 (`layers.float32_weight_grad`).

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _bf16(rng, shape):
  """Random values that bfloat16 holds exactly, as float32."""
  return np.asarray(jnp.asarray(rng.normal(size=shape), jnp.bfloat16),
                    np.float32)


@pytest.mark.parametrize('depthwise', [False, True])
@pytest.mark.parametrize('strides', [1, 2])
def test_float32_weight_grad_conv_accumulates_in_float32(depthwise, strides):
  """The forward pass and the input gradient are the plain bfloat16
  convolution's, bit for bit; the kernel gradient is the float32-accumulated
  one (products of bfloat16 values are exact in float32), in float32."""
  rng = np.random.default_rng(0)
  c = 6
  x, w = _bf16(rng, (4, 9, 9, c)), _bf16(rng, (3, 3, 1 if depthwise else c, 8
                                               if not depthwise else c))
  args = dict(window_strides=(strides, strides), padding='SAME',
              dimension_numbers=_NHWC,
              feature_group_count=c if depthwise else 1)
  x16 = jnp.asarray(x, jnp.bfloat16)

  def plain(x, w):
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), **args)

  def ours(x, w):
    return layers.conv_general_dilated_f32_weight_grad(x, w, **args)

  y, vjp = jax.vjp(ours, x16, jnp.asarray(w))
  y_plain, vjp_plain = jax.vjp(plain, x16, jnp.asarray(w))
  np.testing.assert_array_equal(y, y_plain)
  assert y.dtype == jnp.bfloat16
  g = jnp.asarray(_bf16(rng, y.shape), jnp.bfloat16)
  dx, dw = vjp(g)
  dx_plain, dw_plain = vjp_plain(g)
  np.testing.assert_array_equal(dx, dx_plain)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32

  def exact(w):
    return jax.lax.conv_general_dilated(
        jnp.asarray(x), w, **args, precision=jax.lax.Precision.HIGHEST)

  (dw_exact,) = jax.vjp(exact, jnp.asarray(w))[1](jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(dw, dw_exact, rtol=1e-6, atol=1e-5)
  # Plain autodiff rounds the kernel gradient to bfloat16 first.
  assert (np.abs(dw_plain - dw_exact).max()
          > 10 * np.abs(dw - dw_exact).max())


def test_float32_weight_grad_dense_accumulates_in_float32():
  rng = np.random.default_rng(1)
  x, w = _bf16(rng, (64, 48)), _bf16(rng, (48, 10))
  dims = (((1,), (0,)), ((), ()))
  x16 = jnp.asarray(x, jnp.bfloat16)
  y, vjp = jax.vjp(
      lambda x, w: layers.dot_general_f32_weight_grad(x, w, dims), x16,
      jnp.asarray(w))
  y_plain, vjp_plain = jax.vjp(
      lambda x, w: jax.lax.dot_general(x, w.astype(x.dtype), dims), x16,
      jnp.asarray(w))
  np.testing.assert_array_equal(y, y_plain)
  g = jnp.asarray(_bf16(rng, y.shape), jnp.bfloat16)
  (dx, dw), (dx_plain, _) = vjp(g), vjp_plain(g)
  np.testing.assert_array_equal(dx, dx_plain)
  assert dw.dtype == jnp.float32
  np.testing.assert_allclose(dw, x.T @ np.asarray(g, np.float32), rtol=1e-6,
                             atol=1e-5)


def _gradient_producers(jaxpr):
  """For each output of `jaxpr`, the equation that computes it, looking
  through reshapes and transposes."""
  producer = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
  for out in jaxpr.outvars:
    eqn = producer.get(out)
    while eqn is not None and eqn.primitive.name in (
        'reshape', 'transpose', 'squeeze', 'expand_dims'):
      eqn = producer.get(eqn.invars[0])
    yield out, eqn


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
def test_bfloat16_model_computes_every_parameter_gradient_in_float32(dtype):
  """V3 (convolutions, depthwise, squeeze-and-excite with biases, the Dense
  head and classifier) in bfloat16: each weight gradient is a convolution or
  dot that emits float32 (preferred_element_type), each bias gradient a
  float32 sum, none a cast from bfloat16; the forward and input-gradient
  convolutions stay bfloat16. In float32 the network stays plain Flax."""
  from mobilenet_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('mobilenet_v3_small', alpha=0.35,
                              num_classes=5, ops='reference', dtype=dtype)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  batch_stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             variables['batch_stats'])

  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats},
                            x, train=True,
                            mutable=['batch_stats'],
                            rngs={'dropout': jax.random.key(1)})
    return logits.sum()

  jaxpr = jax.make_jaxpr(jax.grad(loss))(variables['params']).jaxpr
  convs = [e for e in jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
  if dtype == 'float32':
    assert layers.low_precision_kwargs(jnp.float32) == {}
    forward = jax.make_jaxpr(loss)(variables['params']).jaxpr
    assert not any('custom' in e.primitive.name and 'vjp' in e.primitive.name
                   for e in forward.eqns)
    assert all(e.outvars[0].aval.dtype == jnp.float32 for e in convs)
    return
  kernels = 0
  for out, eqn in _gradient_producers(jaxpr):
    assert out.aval.dtype == jnp.float32
    assert eqn.primitive.name != 'convert_element_type', eqn
    if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
      kernels += 1
      assert eqn.params['preferred_element_type'] == jnp.float32
      assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)}
  n_kernels = sum(1 for path, _ in jax.tree_util.tree_flatten_with_path(
      variables['params'])[0] if path[-1].key == 'kernel')
  assert kernels == n_kernels
  weight_grads = [e for e in convs if e.outvars[0].aval.dtype == jnp.float32]
  assert len(weight_grads) == n_kernels - 2  # all but the Dense layers
  for eqn in convs:
    if eqn not in weight_grads:
      assert eqn.outvars[0].aval.dtype == jnp.bfloat16


@pytest.mark.slow
def test_float32_weight_grads_false_is_plain_flax_and_both_track_float32():
  # A tiny V3-Small (squeeze-excite convolutions with biases, the head's and
  # the classifier's dense layers) in bfloat16: with float32_weight_grads the
  # custom transpose; without, plain Flax autodiff. Both gradients are close
  # to the float32 model's (bfloat16 keeps 8 bits of mantissa).
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                       jnp.float32)
  labels = jnp.asarray([0, 1])

  def model(dtype, float32_weight_grads=True):
    return models.create_model(
        'mobilenet_v3_small', alpha=0.35, num_classes=4, dropout_rate=0.0,
        dtype=dtype, ops='reference',
        float32_weight_grads=float32_weight_grads)

  variables = model('float32').init(jax.random.key(0), images)

  def grad_fn(net):
    def loss(params):
      logits = net.apply({**variables, 'params': params}, images)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    return jax.grad(loss)

  def has_custom_vjp(net):
    text = str(jax.make_jaxpr(net.apply)(variables, images))
    return 'custom_vjp' in text

  assert has_custom_vjp(model('bfloat16', True))
  assert not has_custom_vjp(model('bfloat16', False))
  want = jax.jit(grad_fn(model('float32')))(variables['params'])
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want))
  for flag in (True, False):
    got = jax.jit(grad_fn(model('bfloat16', flag)))(variables['params'])
    assert jax.tree.map(lambda g: g.dtype, got) == jax.tree.map(
        lambda g: g.dtype, want)  # float32, like the parameters
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want),
                            jax.tree.leaves(got)):
      np.testing.assert_allclose(g, w, atol=0.05 * scale,
                                 err_msg=f'{flag} {jax.tree_util.keystr(path)}')


def _symmetric_conv(x, kernel, strides, groups=1):
  """PyTorch's `Conv2d(padding=k // 2)`: a convolution with k // 2 explicit
  zeros on every side, written directly with lax."""
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x, kernel, (strides, strides), ((p, p), (p, p)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)


# Stride 1 and 2, even and odd sides, the stem's 3-channel input (the cpu
# set's patches as a dot) and a depthwise conv (its shifted slices).
@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('depthwise_conv, kernel_size, strides', [
    (False, 3, 2), (False, 5, 1), (True, 3, 2), (True, 5, 2), (True, 3, 1)])
def test_symmetric_padding_matches_explicit_k_half_padding(
    op_set, depthwise_conv, kernel_size, strides):
  channels = 6 if depthwise_conv else 3
  x = np.random.default_rng(4).normal(size=(2, 8, 7, channels)).astype(
      np.float32)
  module = ops.OP_SETS[op_set].conv_bn(
      features=4, kernel_size=kernel_size, strides=strides,
      activation='identity', depthwise=depthwise_conv, padding='symmetric')
  variables, kernel = _conv_bn_variables(module, x, 5)
  want = _symmetric_conv(x, kernel, strides, channels if depthwise_conv else 1)
  y, pullback = jax.vjp(lambda x: jax.jit(module.apply)(variables, x), x)
  np.testing.assert_allclose(y, want / np.sqrt(1 + EPS), rtol=1e-5, atol=1e-5)
  g = np.random.default_rng(6).normal(size=y.shape).astype(np.float32)
  _, want_pullback = jax.vjp(
      lambda x: _symmetric_conv(x, kernel, strides,
                                channels if depthwise_conv else 1), x)
  np.testing.assert_allclose(pullback(g)[0],
                             want_pullback(g)[0] / np.sqrt(1 + EPS),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('size, differ', [(8, True), (9, False)])
def test_same_and_symmetric_padding_differ_only_at_even_sizes_on_stride_2(
    op_set, size, differ):
  # Stride 2, k = 3: ceil(n / 2) outputs either way; at an odd side both pad
  # one pixel on each side, at an even side 'SAME' pads (0, 1), symmetric
  # (1, 1), so the windows start one pixel apart.
  x = np.random.default_rng(8).normal(size=(1, size, size, 3)).astype(
      np.float32)
  outputs = []
  for padding in layers.PADDINGS:
    module = ops.OP_SETS[op_set].conv_bn(features=4, kernel_size=3, strides=2,
                                         padding=padding)
    variables, _ = _conv_bn_variables(module, x, 1)
    outputs.append(np.asarray(module.apply(variables, x)))
  assert outputs[0].shape == outputs[1].shape == (1, -(-size // 2),
                                                  -(-size // 2), 4)
  assert (not np.allclose(outputs[0], outputs[1])) == differ


def test_conv_padding_rejects_other_values():
  with pytest.raises(ValueError,
                     match=r"padding must be one of \['same', 'symmetric'\]"):
    layers.conv_padding('SAME', 3)
