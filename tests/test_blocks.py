"""V4's blocks against the blocks and formulas they generalise: a UIB with
both depthwise switches off is a 1x1 -> 1x1 FFN written out here in jnp; with
only the middle depthwise it is V2's `InvertedResidual` (same variables, same
outputs); the FusedIB's k x k expansion conv; Mobile MQA against the V4
paper's equations written out in numpy. Both op sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax import ops
from mobilenet_jax.blocks import (FusedInvertedBottleneck, InvertedResidual,
                                  MobileMQA, UniversalInvertedBottleneck)

OPS = sorted(ops.OP_SETS)


def _random_variables(module, x, seed=0):
  """`module`'s variables with random values, BatchNorm statistics and
  scales away from (0, 1) so that eval mode does more than divide by 1."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    kind = path[-1].key
    if kind == 'var':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif kind == 'scale':
      value = rng.uniform(0.8, 1.2, leaf.shape)
    elif kind == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:  # bias, mean
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _images(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def _apply(module, variables, x, train):
  if train:
    return module.apply(variables, x, train=True, mutable=['batch_stats'])
  return module.apply(variables, x), None


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('features', [8, 16])
def test_uib_without_depthwise_is_a_pointwise_ffn(op_set, features):
  x = _images((2, 5, 5, 8))
  uib = UniversalInvertedBottleneck(
      32, features, start_kernel_size=0, middle_kernel_size=0,
      activation='relu', ops=ops.OP_SETS[op_set])
  variables = _random_variables(uib, x)
  params, stats = variables['params'], variables['batch_stats']
  assert set(params) == {'expand', 'project'}

  def conv_bn(y, name):
    kernel = params[name]['conv']['kernel'][0, 0]
    bn, moments = params[name]['bn'], stats[name]['bn']
    y = jnp.einsum('nhwc,cd->nhwd', y, kernel)
    return ((y - moments['mean']) / jnp.sqrt(moments['var'] + 1e-3)
            * bn['scale'] + bn['bias'])

  want = conv_bn(jax.nn.relu(conv_bn(x, 'expand')), 'project')
  if features == x.shape[-1]:
    want = want + x
  np.testing.assert_allclose(uib.apply(variables, x), want, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('strides, features', [(1, 8), (2, 8), (1, 16)])
@pytest.mark.parametrize('train', [False, True])
def test_uib_with_middle_depthwise_is_the_inverted_residual(
    op_set, strides, features, train):
  x = _images((2, 9, 9, 8))
  kwargs = dict(expanded=24, features=features, strides=strides,
                activation='relu6', ops=ops.OP_SETS[op_set])
  uib = UniversalInvertedBottleneck(start_kernel_size=0, middle_kernel_size=5,
                                    **kwargs)
  ir = InvertedResidual(kernel_size=5, **kwargs)
  variables = _random_variables(uib, x)
  assert (jax.tree.map(jnp.shape, jax.eval_shape(ir.init, jax.random.key(0),
                                                 x))
          == jax.tree.map(jnp.shape, variables))
  got, got_stats = _apply(uib, variables, x, train)
  want, want_stats = _apply(ir, variables, x, train)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert got.shape == (2, -(-9 // strides), -(-9 // strides), features)
  if train:
    jax.tree.map(np.testing.assert_array_equal, got_stats, want_stats)


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('start, middle', [(3, 0), (5, 3)])
def test_uib_start_depthwise_and_its_stride(op_set, start, middle):
  """The start depthwise (no activation) is on the input width; the stride
  sits on the middle depthwise, or on the start one without it."""
  x = _images((2, 8, 8, 16))
  uib = UniversalInvertedBottleneck(64, 24, start_kernel_size=start,
                                    middle_kernel_size=middle, strides=2,
                                    ops=ops.OP_SETS[op_set])
  variables = _random_variables(uib, x)
  params = variables['params']
  assert params['start_depthwise']['conv']['kernel'].shape == (
      start, start, 1, 16)
  assert ('depthwise' in params) == bool(middle)
  assert uib.apply(variables, x).shape == (2, 4, 4, 24)
  # The start depthwise's output (with its BatchNorm) has negative values:
  # no activation after it.
  _, state = uib.apply(variables, x, capture_intermediates=True,
                       mutable=['intermediates'])
  start_out = state['intermediates']['start_depthwise']['__call__'][0]
  assert start_out.shape[1:3] == ((8, 8) if middle else (4, 4))
  assert float(start_out.min()) < 0


def test_uib_stride_needs_a_depthwise():
  uib = UniversalInvertedBottleneck(16, 8, start_kernel_size=0,
                                    middle_kernel_size=0, strides=2)
  with pytest.raises(ValueError, match='^strides must be 1 for a UIB'):
    uib.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('strides', [1, 2])
def test_fused_ib(op_set, strides):
  x = _images((2, 8, 8, 16))
  block = FusedInvertedBottleneck(64, 16, kernel_size=3, strides=strides,
                                  ops=ops.OP_SETS[op_set])
  variables = _random_variables(block, x)
  params = variables['params']
  assert params['expand']['conv']['kernel'].shape == (3, 3, 16, 64)
  assert params['project']['conv']['kernel'].shape == (1, 1, 64, 16)
  out = block.apply(variables, x)
  assert out.shape == (2, 8 // strides, 8 // strides, 16)
  # The branch, from the block's own variables: k x k conv_bn -> act, 1x1
  # conv_bn; plus the input at stride 1 (equal widths).
  op = ops.OP_SETS[op_set]

  def sub(name):
    return {collection: variables[collection][name]
            for collection in ('params', 'batch_stats')}

  branch = op.conv_bn(64, 3, strides, 'relu').apply(sub('expand'), x)
  branch = op.conv_bn(16, 1, 1, 'identity').apply(sub('project'), branch)
  want = branch + x if strides == 1 else branch
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def _np_batch_norm(x, v, eps=1e-3):
  return ((x - v['mean']) / np.sqrt(v['var'] + eps) * v['scale'] + v['bias'])


def _np_depthwise(x, kernel, stride, pads):
  """Depthwise conv of NHWC x with a (k, k, 1, C) kernel, `pads` (before,
  after) zeros on both spatial axes, as loops over the taps."""
  k = kernel.shape[0]
  xp = np.pad(x, [(0, 0), pads, pads, (0, 0)])
  out = (xp.shape[1] - k) // stride + 1
  y = np.zeros((x.shape[0], out, out, x.shape[-1]))
  for a in range(k):
    for b in range(k):
      y += (xp[:, a:a + stride * out:stride, b:b + stride * out:stride]
            * kernel[a, b, 0])
  return y


def _np_mobile_mqa(x, p, s, heads, key_dim, kv_stride, pads):
  """The V4 paper's Mobile MQA, from its equation: pre-norm BN(x) = X;
  head j: softmax((X W_Qj) (SR(X) W_K)^T / sqrt(d_k)) (SR(X) W_V), SR the
  stride-`kv_stride` 3x3 depthwise conv + BN (identity at 1); the heads
  concatenated times W_O; times the layer scale; plus x."""
  n, h, w, c = x.shape
  xn = _np_batch_norm(x, {**p['norm'], **s['norm']})

  def reduce(name):
    if kv_stride == 1:
      return xn
    y = _np_depthwise(xn, p[f'{name}_down']['conv']['kernel'], kv_stride,
                      pads)
    return _np_batch_norm(y, {**p[f'{name}_down']['bn'],
                              **s[f'{name}_down']['bn']})

  keys = reduce('key').reshape(n, -1, c) @ p['key']['kernel'][0, 0]
  values = reduce('value').reshape(n, -1, c) @ p['value']['kernel'][0, 0]
  w_q = p['query']['kernel'][0, 0]
  outputs = []
  for j in range(heads):
    q = xn.reshape(n, h * w, c) @ w_q[:, j * key_dim:(j + 1) * key_dim]
    logits = q @ keys.transpose(0, 2, 1) / np.sqrt(key_dim)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    outputs.append(weights @ values)
  o = np.concatenate(outputs, -1) @ p['output']['kernel'][0, 0]
  o = o.reshape(n, h, w, -1) * p['layer_scale']
  return o + x if o.shape[-1] == c else o


@pytest.mark.parametrize('op_set', OPS)
@pytest.mark.parametrize('kv_stride, padding, pads, features', [
    (2, 'same', (0, 1), 16), (2, 'symmetric', (1, 1), 16), (1, 'same', None,
                                                            24)])
def test_mobile_mqa_equals_the_papers_equations(op_set, kv_stride, padding,
                                                 pads, features):
  x = _images((2, 6, 6, 16))
  block = MobileMQA(3, 8, features, kv_stride=kv_stride, layer_scale=1e-5,
                    padding=padding, ops=ops.OP_SETS[op_set])
  variables = _random_variables(block, x)
  params = variables['params']
  assert params['query']['kernel'].shape == (1, 1, 16, 3 * 8)
  assert params['key']['kernel'].shape == params['value']['kernel'].shape == (
      1, 1, 16, 8)
  assert params['output']['kernel'].shape == (1, 1, 3 * 8, features)
  assert ('key_down' in params) == (kv_stride > 1)
  init = block.init(jax.random.key(0), x)['params']['layer_scale']
  np.testing.assert_array_equal(init, np.full(features, 1e-5, np.float32))
  np_variables = jax.tree.map(np.asarray, variables)
  want = _np_mobile_mqa(np.asarray(x), np_variables['params'],
                        np_variables['batch_stats'], 3, 8, kv_stride, pads)
  np.testing.assert_allclose(block.apply(variables, x), want, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize('op_set', OPS)
def test_uib_layer_scale_scales_the_branch_before_the_shortcut(op_set):
  # The hybrids' UIBs: x + gamma * branch(x), per output channel.
  x = _images((2, 5, 5, 8))
  plain, scaled = (UniversalInvertedBottleneck(
      16, 8, start_kernel_size=3, middle_kernel_size=3, layer_scale=scale,
      ops=ops.OP_SETS[op_set]) for scale in (None, 1e-5))
  variables = _random_variables(scaled, x)
  gamma = variables['params']['layer_scale']
  assert gamma.shape == (8,)
  without = {'params': {k: v for k, v in variables['params'].items()
                        if k != 'layer_scale'},
             'batch_stats': variables['batch_stats']}
  branch = plain.apply(without, x) - x
  np.testing.assert_allclose(scaled.apply(variables, x), x + gamma * branch,
                             rtol=1e-5, atol=1e-6)
