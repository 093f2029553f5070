"""The MobileNet builder and registry against the papers' tables and the
Keras Applications width rules, written out independently here.

Shapes and widths come from `jax.eval_shape` (no compute); the few real
forward passes use MobileNetV3-Small at alpha 0.25 on 32x32 images.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax import models

NAMES = sorted(models.REGISTRY)
V1_NAMES = ['mobilenet_v1', 'mobilenet_v1_standard']


def _make_divisible(v):
  """V2/V3 rounding (TF-slim / Keras `_make_divisible`, divisor 8)."""
  r = max(8, int(v + 4) // 8 * 8)
  return r + 8 if r < 0.9 * v else r


# V1 paper table 1: output widths and strides of the stem and the 13
# separable pairs (the table's last 's2' is a typo: it keeps the 7x7 map).
V1_WIDTHS = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
V1_STRIDES = [2, 1, 2, 1, 2, 1, 2] + [1] * 5 + [2, 1]
# V2 paper table 2: (t, c, n, s).
V2_ROWS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# V3 paper tables 1 and 2, bneck rows: (kernel, exp size, #out, SE, stride).
V3_LARGE_ROWS = [
    (3, 16, 16, False, 1), (3, 64, 24, False, 2), (3, 72, 24, False, 1),
    (5, 72, 40, True, 2), (5, 120, 40, True, 1), (5, 120, 40, True, 1),
    (3, 240, 80, False, 2), (3, 200, 80, False, 1), (3, 184, 80, False, 1),
    (3, 184, 80, False, 1), (3, 480, 112, True, 1), (3, 672, 112, True, 1),
    (5, 672, 160, True, 2), (5, 960, 160, True, 1), (5, 960, 160, True, 1)]
V3_SMALL_ROWS = [
    (3, 16, 16, True, 2), (3, 72, 24, False, 2), (3, 88, 24, False, 1),
    (5, 96, 40, True, 2), (5, 240, 40, True, 1), (5, 240, 40, True, 1),
    (5, 120, 48, True, 1), (5, 144, 48, True, 1), (5, 288, 96, True, 2),
    (5, 576, 96, True, 1), (5, 576, 96, True, 1)]
# name -> (rows, last 1x1 conv width, head width), paper alpha = 1.0 values.
V3_TABLES = {
    'mobilenet_v3_large': (V3_LARGE_ROWS, 960, 1280),
    'mobilenet_v3_small': (V3_SMALL_ROWS, 576, 1024),
}
# V4 appendix tables (MNv4-Conv-S/M/L) as the TF Model Garden and timm layer
# lists give them: one entry per layer after the 3x3 stride-2 stem, as
# (kind, start dw kernel, middle dw kernel, expansion ratio, out, stride);
# 'conv' rows carry (kernel, None, None, out, stride); the hybrids' Mobile
# MQA rows (timm's `mqa_r1_k3_h{heads}_v{kv stride}_d{key_dim}`) carry
# ('mqa', heads, key_dim, kv stride, out, 1). Each model ends in a 1x1 conv
# to 960 and a 1280-wide head.
_UIB, _MQA = 'uib', 'mqa'
V4_STEMS = {'mobilenet_v4_conv_small': 32, 'mobilenet_v4_conv_medium': 32,
            'mobilenet_v4_conv_large': 24, 'mobilenet_v4_hybrid_medium': 32,
            'mobilenet_v4_hybrid_large': 24}
_MQA_M16, _MQA_M32 = (_MQA, 4, 64, 2, 160, 1), (_MQA, 4, 64, 1, 256, 1)
_MQA_L16, _MQA_L32 = (_MQA, 8, 48, 2, 192, 1), (_MQA, 8, 64, 1, 512, 1)
V4_TABLES = {
    'mobilenet_v4_conv_small': [
        ('conv', 3, None, None, 32, 2), ('conv', 1, None, None, 32, 1),
        ('conv', 3, None, None, 96, 2), ('conv', 1, None, None, 64, 1),
        (_UIB, 5, 5, 3, 96, 2), *[(_UIB, 0, 3, 2, 96, 1)] * 4,
        (_UIB, 3, 0, 4, 96, 1),
        (_UIB, 3, 3, 6, 128, 2), (_UIB, 5, 5, 4, 128, 1),
        (_UIB, 0, 5, 4, 128, 1), (_UIB, 0, 5, 3, 128, 1),
        *[(_UIB, 0, 3, 4, 128, 1)] * 2],
    'mobilenet_v4_conv_medium': [
        ('fused_ib', 3, None, 4, 48, 2),
        (_UIB, 3, 5, 4, 80, 2), (_UIB, 3, 3, 2, 80, 1),
        (_UIB, 3, 5, 6, 160, 2), *[(_UIB, 3, 3, 4, 160, 1)] * 2,
        (_UIB, 3, 5, 4, 160, 1), (_UIB, 3, 3, 4, 160, 1),
        (_UIB, 3, 0, 4, 160, 1), (_UIB, 0, 0, 2, 160, 1),
        (_UIB, 3, 0, 4, 160, 1),
        (_UIB, 5, 5, 6, 256, 2), (_UIB, 5, 5, 4, 256, 1),
        *[(_UIB, 3, 5, 4, 256, 1)] * 2, (_UIB, 0, 0, 4, 256, 1),
        (_UIB, 3, 0, 4, 256, 1), (_UIB, 3, 5, 2, 256, 1),
        (_UIB, 5, 5, 4, 256, 1), *[(_UIB, 0, 0, 4, 256, 1)] * 2,
        (_UIB, 5, 0, 2, 256, 1)],
    'mobilenet_v4_conv_large': [
        ('fused_ib', 3, None, 4, 48, 2),
        (_UIB, 3, 5, 4, 96, 2), (_UIB, 3, 3, 4, 96, 1),
        (_UIB, 3, 5, 4, 192, 2), *[(_UIB, 3, 3, 4, 192, 1)] * 3,
        (_UIB, 3, 5, 4, 192, 1), *[(_UIB, 5, 3, 4, 192, 1)] * 5,
        (_UIB, 3, 0, 4, 192, 1),
        (_UIB, 5, 5, 4, 512, 2), *[(_UIB, 5, 5, 4, 512, 1)] * 3,
        (_UIB, 5, 0, 4, 512, 1), (_UIB, 5, 3, 4, 512, 1),
        *[(_UIB, 5, 0, 4, 512, 1)] * 2, (_UIB, 5, 3, 4, 512, 1),
        (_UIB, 5, 5, 4, 512, 1), *[(_UIB, 5, 0, 4, 512, 1)] * 3],
    'mobilenet_v4_hybrid_medium': [
        ('fused_ib', 3, None, 4, 48, 2),
        (_UIB, 3, 5, 4, 80, 2), (_UIB, 3, 3, 2, 80, 1),
        (_UIB, 3, 5, 6, 160, 2), (_UIB, 0, 0, 2, 160, 1),
        (_UIB, 3, 3, 4, 160, 1), (_UIB, 3, 5, 4, 160, 1), _MQA_M16,
        (_UIB, 3, 3, 4, 160, 1), _MQA_M16, (_UIB, 3, 0, 4, 160, 1), _MQA_M16,
        (_UIB, 3, 3, 4, 160, 1), _MQA_M16, (_UIB, 3, 0, 4, 160, 1),
        (_UIB, 5, 5, 6, 256, 2), (_UIB, 5, 5, 4, 256, 1),
        *[(_UIB, 3, 5, 4, 256, 1)] * 2, (_UIB, 0, 0, 2, 256, 1),
        (_UIB, 3, 5, 2, 256, 1), (_UIB, 0, 0, 2, 256, 1),
        (_UIB, 0, 0, 4, 256, 1), _MQA_M32, (_UIB, 3, 0, 4, 256, 1), _MQA_M32,
        (_UIB, 5, 5, 4, 256, 1), _MQA_M32, (_UIB, 5, 0, 4, 256, 1), _MQA_M32,
        (_UIB, 5, 0, 4, 256, 1)],
    'mobilenet_v4_hybrid_large': [
        ('fused_ib', 3, None, 4, 48, 2),
        (_UIB, 3, 5, 4, 96, 2), (_UIB, 3, 3, 4, 96, 1),
        (_UIB, 3, 5, 4, 192, 2), *[(_UIB, 3, 3, 4, 192, 1)] * 3,
        (_UIB, 3, 5, 4, 192, 1), *[(_UIB, 5, 3, 4, 192, 1)] * 2,
        *[_MQA_L16, (_UIB, 5, 3, 4, 192, 1)] * 3, _MQA_L16,
        (_UIB, 3, 0, 4, 192, 1),
        (_UIB, 5, 5, 4, 512, 2), *[(_UIB, 5, 5, 4, 512, 1)] * 3,
        (_UIB, 5, 0, 4, 512, 1), (_UIB, 5, 3, 4, 512, 1),
        *[(_UIB, 5, 0, 4, 512, 1)] * 2, (_UIB, 5, 3, 4, 512, 1),
        (_UIB, 5, 5, 4, 512, 1), *[_MQA_L32, (_UIB, 5, 0, 4, 512, 1)] * 4],
}
V4_NAMES = sorted(V4_TABLES)
HYBRID_NAMES = ['mobilenet_v4_hybrid_large', 'mobilenet_v4_hybrid_medium']


def _abstract(name, height=224, width=224, batch=2, **kwargs):
  """(output, variables) of `create_model(name, **kwargs)`, shapes only."""
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  return _abstract_cached(name, height, width, batch,
                          tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _abstract_cached(name, height, width, batch, kwargs):
  model = models.create_model(name, **dict(kwargs))
  images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
  return jax.eval_shape(model.init_with_output, jax.random.key(0), images)


def _params(name, **kwargs):
  return _abstract(name, **kwargs)[1]['params']


def _last_width(name, alpha):
  """Width of the last conv (the pooled features), from the papers' tables
  and the Keras Applications rules."""
  if name in V1_NAMES:
    return int(1024 * alpha)
  if name == 'mobilenet_v2':
    return 1280 if alpha <= 1 else _make_divisible(1280 * alpha)
  if name in V4_TABLES:  # the 960-wide last 1x1 conv scales with alpha
    return _make_divisible(960 * alpha)
  # V3: the last 1x1 conv scales with its input, like an expansion size
  # (Keras: 6 x the rounded last bneck width).
  rows, last, _ = V3_TABLES[name.replace('_minimal', '')]
  paper_in = rows[-1][2]
  return _make_divisible(_make_divisible(paper_in * alpha) * last / paper_in)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize('name', NAMES)
def test_logits_shape(name):
  out, _ = _abstract(name, alpha=1.0)
  assert out.shape == (2, 1000) and out.dtype == jnp.float32
  out, _ = _abstract(name, 113, 75, 3, alpha=0.5, num_classes=37)
  assert out.shape == (3, 37) and out.dtype == jnp.float32
  # A class count read with numpy works the same.
  out, _ = _abstract(name, 113, 75, 3, alpha=0.5, num_classes=np.int64(37))
  assert out.shape == (3, 37)


# Pooled feature widths at alpha 1: the last conv of each paper's table.
POOLED_WIDTHS = {
    'mobilenet_v1': 1024, 'mobilenet_v1_standard': 1024,
    'mobilenet_v2': 1280, 'mobilenet_v3_large': 960,
    'mobilenet_v3_small': 576, 'mobilenet_v3_large_minimal': 960,
    'mobilenet_v3_small_minimal': 576, 'mobilenet_v4_conv_small': 960,
    'mobilenet_v4_conv_medium': 960, 'mobilenet_v4_conv_large': 960,
    'mobilenet_v4_hybrid_medium': 960, 'mobilenet_v4_hybrid_large': 960}


@pytest.mark.parametrize('name', NAMES)
def test_include_top_false_gives_pooled_last_conv(name):
  for alpha in (0.35, 1.0):
    out, variables = _abstract(name, alpha=alpha, include_top=False)
    assert out.shape == (2, _last_width(name, alpha)), alpha
    assert out.dtype == jnp.float32
    assert 'classifier' not in variables['params']
    assert 'head' not in variables['params']
  assert _last_width(name, 1.0) == POOLED_WIDTHS[name]


def test_pooled_widths_literal():
  assert set(POOLED_WIDTHS) == set(NAMES)
  out, _ = _abstract('mobilenet_v1', alpha=0.25, include_top=False)
  assert out.shape == (2, 256)
  out, _ = _abstract('mobilenet_v2', alpha=0.35, include_top=False)
  assert out.shape == (2, 1280)  # not shrunk for alpha < 1
  out, _ = _abstract('mobilenet_v2', alpha=1.4, include_top=False)
  assert out.shape == (2, 1792)


# Widths of the last map at strides 4, 8, 16, 32, alpha 1 (papers' tables).
FEATURE_WIDTHS = {
    'mobilenet_v1': (128, 256, 512, 1024),
    'mobilenet_v1_standard': (128, 256, 512, 1024),
    'mobilenet_v2': (24, 32, 96, 1280),
    'mobilenet_v3_large': (24, 40, 112, 960),
    'mobilenet_v3_small': (16, 24, 48, 576),
    'mobilenet_v3_large_minimal': (24, 40, 112, 960),
    'mobilenet_v3_small_minimal': (16, 24, 48, 576),
    'mobilenet_v4_conv_small': (32, 64, 96, 960),
    'mobilenet_v4_conv_medium': (48, 80, 160, 960),
    'mobilenet_v4_conv_large': (48, 96, 192, 960),
    'mobilenet_v4_hybrid_medium': (48, 80, 160, 960),
    'mobilenet_v4_hybrid_large': (48, 96, 192, 960),
}


@pytest.mark.parametrize('name, resolution', [
    *((name, r) for name in NAMES for r in (224, 113)),
    ('mobilenet_v1', 160), ('mobilenet_v2', 96), ('mobilenet_v3_large', 160),
    ('mobilenet_v3_small', 96)])
def test_features_only(name, resolution):
  out, _ = _abstract(name, resolution, resolution, features_only=True)
  assert set(out) == {4, 8, 16, 32}
  for i, stride in enumerate((4, 8, 16, 32)):
    side = math.ceil(resolution / stride)
    assert out[stride].shape == (2, side, side, FEATURE_WIDTHS[name][i]), (
        stride)


# ---------------------------------------------------------------- widths


@pytest.mark.parametrize('alpha', [0.25, 0.75, 1.3])
def test_v1_widths_are_int_alpha_c(alpha):
  expected = [int(alpha * c) for c in V1_WIDTHS]
  params = _params('mobilenet_v1', alpha=alpha)
  assert params['stem']['conv']['kernel'].shape == (3, 3, 3, expected[0])
  for i in range(1, len(V1_WIDTHS)):
    block = params[f'block_{i}']
    assert block['depthwise']['conv']['kernel'].shape == (
        3, 3, 1, expected[i - 1])
    assert block['pointwise']['conv']['kernel'].shape == (
        1, 1, expected[i - 1], expected[i])
  assert params['classifier']['kernel'].shape == (expected[-1], 1000)
  standard = _params('mobilenet_v1_standard', alpha=alpha)
  for i in range(1, len(V1_WIDTHS)):
    assert standard[f'block_{i}']['conv']['kernel'].shape == (
        3, 3, expected[i - 1], expected[i])


def test_v1_alpha_quarter_literal():
  params = _params('mobilenet_v1', alpha=0.25)
  widths = [params['stem']['conv']['kernel'].shape[-1]] + [
      params[f'block_{i}']['pointwise']['conv']['kernel'].shape[-1]
      for i in range(1, 14)]
  assert widths == [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128,
                    256, 256]


def _v2_expected(alpha, expansion):
  """Stem width and [(expanded width, or None where there is no expand
  conv (t = 1); output width)], from table 2 and the Keras rules."""
  stem = width = _make_divisible(32 * alpha)
  blocks = []
  for t, c, n, _ in V2_ROWS:
    t = t if (t == 1 or expansion is None) else expansion
    out = _make_divisible(c * alpha)
    for _ in range(n):
      blocks.append((width * t if t != 1 else None, out))
      width = out
  return stem, blocks


@pytest.mark.parametrize('alpha, expansion', [
    (0.35, None), (1.0, None), (1.4, None), (0.5, 4), (1.0, 3)])
def test_v2_widths_follow_make_divisible_and_t(alpha, expansion):
  params = _params('mobilenet_v2', alpha=alpha, expansion=expansion)
  stem, blocks = _v2_expected(alpha, expansion)
  assert params['stem']['conv']['kernel'].shape == (3, 3, 3, stem)
  width = stem
  for i, (expanded, out) in enumerate(blocks, start=1):
    block = params[f'block_{i}']
    if expanded is None:
      assert 'expand' not in block, i
      expanded = width
    else:
      assert block['expand']['conv']['kernel'].shape == (
          1, 1, width, expanded), i
    assert block['depthwise']['conv']['kernel'].shape == (3, 3, 1, expanded)
    assert block['project']['conv']['kernel'].shape == (1, 1, expanded, out)
    width = out
  last = params[f'block_{len(blocks) + 1}']['conv']['kernel']
  assert last.shape == (1, 1, width, _last_width('mobilenet_v2', alpha))


def test_v2_literal_widths():
  params = _params('mobilenet_v2', alpha=0.35)
  assert params['stem']['conv']['kernel'].shape[-1] == 16
  assert 'expand' not in params['block_1']  # t = 1
  assert params['block_1']['project']['conv']['kernel'].shape == (1, 1, 16, 8)
  assert params['block_18']['conv']['kernel'].shape[-1] == 1280
  params = _params('mobilenet_v2', alpha=1.4)
  assert params['block_18']['conv']['kernel'].shape[-1] == 1792
  # expansion = 4: 4 x input from the second bottleneck on (16 -> 64).
  params = _params('mobilenet_v2', alpha=1.0, expansion=4)
  assert 'expand' not in params['block_1']
  assert params['block_2']['expand']['conv']['kernel'].shape == (1, 1, 16, 64)
  assert params['block_3']['expand']['conv']['kernel'].shape == (1, 1, 24, 96)


@pytest.mark.parametrize('name, alpha, expansion', [
    ('mobilenet_v3_large', 0.75, None), ('mobilenet_v3_large', 1.0, None),
    ('mobilenet_v3_large', 1.25, None), ('mobilenet_v3_large', 1.0, 2),
    ('mobilenet_v3_small', 0.5, None), ('mobilenet_v3_small', 1.0, None),
    ('mobilenet_v3_small', 0.75, 0.5),
    ('mobilenet_v3_large_minimal', 0.5, None),
    ('mobilenet_v3_small_minimal', 1.0, 3),
])
def test_v3_widths_follow_keras_rules(name, alpha, expansion):
  minimal = name.endswith('_minimal')
  rows, _, head = V3_TABLES[name.replace('_minimal', '')]
  params = _params(name, alpha=alpha, expansion=expansion)
  # The 16-channel stem is not scaled.
  assert params['stem']['conv']['kernel'].shape == (3, 3, 3, 16)
  width, paper_width = 16, 16
  for i, (k, exp, out, se, _) in enumerate(rows, start=1):
    block = params[f'block_{i}']
    expanded = _make_divisible(width * exp / paper_width * (expansion or 1))
    out_width = _make_divisible(out * alpha)
    if expanded == width:
      assert 'expand' not in block, i
    else:
      assert block['expand']['conv']['kernel'].shape == (
          1, 1, width, expanded), i
    k = 3 if minimal else k
    assert block['depthwise']['conv']['kernel'].shape == (k, k, 1, expanded)
    if se and not minimal:
      squeeze = _make_divisible(expanded / 4)
      assert block['se']['reduce']['kernel'].shape == (
          1, 1, expanded, squeeze), i
      assert block['se']['expand']['kernel'].shape == (
          1, 1, squeeze, expanded), i
    else:
      assert 'se' not in block, i
    assert block['project']['conv']['kernel'].shape == (
        1, 1, expanded, out_width)
    width, paper_width = out_width, out
  last = params[f'block_{len(rows) + 1}']['conv']['kernel']
  assert last.shape == (1, 1, width, _last_width(name, alpha))
  head_width = head if alpha <= 1 else _make_divisible(head * alpha)
  assert params['head']['kernel'].shape == (last.shape[-1], head_width)
  assert params['classifier']['kernel'].shape == (head_width, 1000)


def test_v3_literal_widths():
  params = _params('mobilenet_v3_large', alpha=0.5)
  assert params['stem']['conv']['kernel'].shape[-1] == 16  # not 8
  assert params['head']['kernel'].shape[-1] == 1280  # not shrunk
  params = _params('mobilenet_v3_small', alpha=0.75)
  assert params['head']['kernel'].shape[-1] == 1024
  params = _params('mobilenet_v3_large', alpha=1.0)
  assert 'expand' not in params['block_1']  # exp size 16 = input width
  # Block 4 (exp 72): squeeze make_divisible(72 / 4 = 18) = 24.
  assert params['block_4']['se']['reduce']['kernel'].shape == (1, 1, 72, 24)
  # expansion 2 doubles every exp size: block 2's 64 -> 128.
  params = _params('mobilenet_v3_large', alpha=1.0, expansion=2)
  assert params['block_2']['expand']['conv']['kernel'].shape == (
      1, 1, 16, 128)


@pytest.mark.parametrize('name', V4_NAMES)
@pytest.mark.parametrize('alpha, expansion', [(1.0, None), (0.5, None),
                                              (1.5, 2)])
def test_v4_widths_follow_the_tables(name, alpha, expansion):
  """Every layer's kernel shape from the table: alpha scales each width with
  make_divisible, the stem only for alpha > 1; the expanded width is
  make_divisible(input width * ratio * t); the 1280 head is not shrunk."""
  params = _params(name, alpha=alpha, expansion=expansion)
  stem = V4_STEMS[name]
  width = stem if alpha <= 1 else _make_divisible(stem * alpha)
  assert params['stem']['conv']['kernel'].shape == (3, 3, 3, width)
  for i, (kind, start, middle, ratio, out, _) in enumerate(V4_TABLES[name],
                                                          start=1):
    block, out = params[f'block_{i}'], _make_divisible(out * alpha)
    if kind == 'conv':
      assert block['conv']['kernel'].shape == (start, start, width, out), i
      width = out
      continue
    if kind == _MQA:  # heads and key_dim do not scale with alpha
      heads, key_dim, kv_stride = start, middle, ratio
      assert block['query']['kernel'].shape == (1, 1, width, heads * key_dim)
      for head in ('key', 'value'):
        assert block[head]['kernel'].shape == (1, 1, width, key_dim), i
      assert block['output']['kernel'].shape == (1, 1, heads * key_dim, out)
      names = {'norm', 'query', 'key', 'value', 'output', 'layer_scale'}
      if kv_stride > 1:
        names |= {'key_down', 'value_down'}
        assert block['key_down']['conv']['kernel'].shape == (3, 3, 1, width)
      assert set(block) == names, i
      width = out
      continue
    expanded = _make_divisible(width * ratio * (expansion or 1))
    kernel = start if kind == 'fused_ib' else 1
    assert block['expand']['conv']['kernel'].shape == (
        kernel, kernel, width, expanded), i
    if kind == _UIB and start:
      assert block['start_depthwise']['conv']['kernel'].shape == (
          start, start, 1, width), i
    if kind == _UIB and middle:
      assert block['depthwise']['conv']['kernel'].shape == (
          middle, middle, 1, expanded), i
    names = {'expand', 'project'}
    if kind == _UIB and start:
      names.add('start_depthwise')
    if kind == _UIB and middle:
      names.add('depthwise')
    if kind == _UIB and name in HYBRID_NAMES:
      names.add('layer_scale')
      assert block['layer_scale'].shape == (out,), i
    assert set(block) == names, i
    assert block['project']['conv']['kernel'].shape == (
        1, 1, expanded, out), i
    width = out
  last = params[f'block_{len(V4_TABLES[name]) + 1}']['conv']['kernel']
  assert last.shape == (1, 1, width, _last_width(name, alpha))
  head = 1280 if alpha <= 1 else _make_divisible(1280 * alpha)
  # The head: a 1x1 conv (no bias) + BatchNorm on the pooled map.
  assert params['head']['conv']['kernel'].shape == (
      1, 1, last.shape[-1], head)
  assert set(params['head']) == {'conv', 'bn'}
  assert params['classifier']['kernel'].shape == (head, 1000)


@pytest.mark.parametrize('name', V4_NAMES)
def test_v4_block_output_shapes_and_strides(name):
  """Each block's output map at 224 px: side 224 / (product of strides so
  far), width from the table."""
  model = models.create_model(name, ops='reference')
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, capture_intermediates=True,
                               mutable=['intermediates']), variables, images)
  acts = state['intermediates']
  rows = [('conv', 3, None, None, V4_STEMS[name], 2), *V4_TABLES[name],
          ('conv', 1, None, None, 960, 1)]
  side, width = 224, 3
  plan = models.plan_layers(models.REGISTRY[name])
  assert len(plan) == len(rows)
  for layer, (kind, *_, out, stride) in zip(plan, rows):
    side //= stride
    assert layer.kind == kind and layer.stride == stride, layer.name
    assert acts[layer.name]['__call__'][0].shape == (1, side, side, out), (
        layer.name)
    width = out
  assert side == 7 and width == 960


@pytest.mark.parametrize('name', NAMES)
def test_plan_strides_match_the_papers(name):
  if name in V1_NAMES:
    expected = V1_STRIDES
  elif name == 'mobilenet_v2':
    expected = [2] + [s if i == 0 else 1 for _, _, n, s in V2_ROWS
                      for i in range(n)] + [1]
  elif name in V4_TABLES:
    expected = [2] + [row[-1] for row in V4_TABLES[name]] + [1]
  else:
    rows, _, _ = V3_TABLES[name.replace('_minimal', '')]
    expected = [2] + [row[-1] for row in rows] + [1]
  plan = models.plan_layers(models.REGISTRY[name])
  assert [layer.stride for layer in plan] == expected
  # Mobile MQA has no stride (queries at full resolution).
  assert [dict(layer.args).get('strides', 1) for layer in plan] == expected
  assert all('strides' in dict(layer.args) for layer in plan
             if layer.kind != 'mqa')


# The papers' blocks with an identity shortcut at alpha 1 (stride 1, equal
# widths): V2 table 2 (every repeat but the first of a row, except the
# 64 -> 96 row); V3 tables 1 and 2.
RESIDUAL_BLOCKS = {
    'mobilenet_v2': {3, 5, 6, 8, 9, 10, 12, 13, 15, 16},
    'mobilenet_v3_large': {1, 3, 5, 6, 8, 9, 10, 12, 14, 15},
    'mobilenet_v3_small': {3, 5, 6, 8, 10, 11},
}


@pytest.mark.parametrize('name', sorted(RESIDUAL_BLOCKS))
def test_plan_has_shortcuts_where_the_papers_do(name):
  plan = models.plan_layers(models.REGISTRY[name])
  width, shortcuts = 3, set()
  for i, layer in enumerate(plan):
    args = dict(layer.args)
    if (layer.kind == 'inverted_residual' and layer.stride == 1
        and args['features'] == width):
      shortcuts.add(i)
    width = args['features']
  assert shortcuts == RESIDUAL_BLOCKS[name]
  assert [layer.name for layer in plan[:2]] == ['stem', 'block_1']


# ---------------------------------------------------------------- forward


def _random_variables(model, images, seed=0):
  """Variables of `model` with random values (He-normal kernels, BN scale
  and statistics away from 1 / 0), without compiling `model.init`."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    kind = path[-1].key
    if kind == 'kernel':
      value = rng.normal(size=leaf.shape) * np.sqrt(
          2 / np.prod(leaf.shape[:-1]))
    elif kind == 'var':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif kind == 'scale':
      value = rng.uniform(0.8, 1.2, leaf.shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


SMALL = dict(alpha=0.25, num_classes=10)


@pytest.fixture(scope='module')
def small():
  """MobileNetV3-Small at alpha 0.25 with dropout 0.5, its variables, two
  32x32 images and jitted forward passes (logits, collections) in eval and
  train mode, capturing every module's output, for a given dropout key."""
  model = models.create_model('mobilenet_v3_small', dropout_rate=0.5,
                              **SMALL)
  images = jnp.asarray(
      np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)

  def forward(train):
    mutable = ['batch_stats', 'intermediates'] if train else ['intermediates']
    return jax.jit(lambda v, x, seed: model.apply(
        v, x, train=train, rngs={'dropout': jax.random.key(seed)},
        mutable=mutable, capture_intermediates=True))

  return dict(model=model, variables=_random_variables(model, images),
              images=images, eval=forward(False), train=forward(True))


def test_eval_mode_is_deterministic(small):
  logits, _ = small['eval'](small['variables'], small['images'], 0)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # Dropout is off in eval mode, whatever the rng.
  again, _ = small['eval'](small['variables'], small['images'], 1)
  np.testing.assert_array_equal(logits, again)


def test_train_mode_updates_batch_stats(small):
  variables = small['variables']
  logits_train, state = small['train'](variables, small['images'], 0)
  assert set(state) == {'batch_stats', 'intermediates'}
  old, new = variables['batch_stats'], state['batch_stats']
  assert jax.tree.structure(old) == jax.tree.structure(new)
  for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    assert np.all(np.asarray(a) != np.asarray(b))
  # V3's BatchNorm decay is 0.999 (Keras): stem statistics, exactly.
  conv = np.asarray(state['intermediates']['stem']['conv']['__call__'][0],
                    np.float64)
  stem_old, stem_new = old['stem']['bn'], new['stem']['bn']
  np.testing.assert_allclose(
      stem_new['mean'],
      0.999 * stem_old['mean'] + 0.001 * conv.mean(axis=(0, 1, 2)),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      stem_new['var'],
      0.999 * stem_old['var'] + 0.001 * conv.var(axis=(0, 1, 2)),
      rtol=1e-5, atol=1e-6)
  # Batch statistics instead of running ones: different outputs.
  logits_eval, _ = small['eval'](variables, small['images'], 0)
  assert not np.allclose(logits_train, logits_eval, atol=1e-3)


def _dropout_in_out(state):
  """The dropout layer's input (h-swish of the head) and output."""
  acts = state['intermediates']
  head = np.asarray(acts['head']['__call__'][0], np.float64)
  return head * np.clip(head + 3, 0, 6) / 6, acts['Dropout_0']['__call__'][0]


def test_dropout_only_in_train_mode(small):
  variables, images = small['variables'], small['images']
  _, state = small['eval'](variables, images, 0)
  kept, dropped = _dropout_in_out(state)
  np.testing.assert_allclose(dropped, kept, rtol=1e-5, atol=1e-5)

  logits_0, state = small['train'](variables, images, 0)
  logits_1, _ = small['train'](variables, images, 1)
  assert not np.allclose(logits_0, logits_1)
  # Rate 0.5: about half the features zeroed, the others scaled by 2.
  kept, dropped = _dropout_in_out(state)
  dropped = np.asarray(dropped)
  zero = dropped == 0
  assert 0.4 < zero.mean() < 0.6
  np.testing.assert_allclose(dropped[~zero], 2 * kept[~zero], rtol=1e-5,
                             atol=1e-5)


def test_shortcuts_exactly_where_stride_one_and_equal_widths(small):
  # From the activations themselves: a block's output is its projection
  # plus its input exactly when it keeps the map size and the width.
  # At alpha 0.25 V3-Small's 40 -> 48 block becomes 16 -> 16 and gains one.
  _, state = small['eval'](small['variables'], small['images'], 0)
  acts = state['intermediates']
  previous = acts['stem']['__call__'][0]
  shortcuts = set()
  for i in range(1, len(V3_SMALL_ROWS) + 1):
    block = acts[f'block_{i}']
    out, projected = block['__call__'][0], block['project']['__call__'][0]
    if out.shape == previous.shape:
      np.testing.assert_allclose(out, projected + previous, rtol=1e-5,
                                 atol=1e-5)
      shortcuts.add(i)
    else:
      np.testing.assert_array_equal(out, projected)
    previous = out
  assert shortcuts == {3, 5, 6, 7, 8, 10, 11}


def test_bfloat16_compute_float32_params_and_logits(small):
  variables, images = small['variables'], small['images']
  bf16 = models.create_model('mobilenet_v3_small', dtype='bfloat16',
                             dropout_rate=0.5, **SMALL)
  abstract = jax.eval_shape(bf16.init, jax.random.key(0), images)
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype('float32')}
  logits, state = jax.eval_shape(
      lambda v, x: bf16.apply(v, x, train=True, capture_intermediates=True,
                              mutable=['batch_stats', 'intermediates'],
                              rngs={'dropout': jax.random.key(0)}),
      variables, images)
  assert logits.dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(state['batch_stats'])} == {
      jnp.dtype('float32')}
  acts = state['intermediates']
  for name in ['stem', 'block_1', 'block_5', 'block_11', 'block_12']:
    assert acts[name]['__call__'][0].dtype == jnp.bfloat16, name
  # The head's nn.Dense adds its bias in float32 (float32 bias gradients,
  # layers.low_precision_kwargs); the model casts its output back.
  assert acts['head']['__call__'][0].dtype == jnp.float32
  assert acts['block_4']['se']['__call__'][0].dtype == jnp.bfloat16
  # Same variables, bfloat16 compute: close to float32 (8-bit mantissa).
  reference, _ = small['eval'](variables, images, 0)
  reference = np.asarray(reference)
  np.testing.assert_allclose(jax.jit(bf16.apply)(variables, images),
                             reference, rtol=0.05,
                             atol=0.05 * np.abs(reference).max())


# ---------------------------------------------------------------- errors


def _raises(field, fn, *args, **kwargs):
  """Asserts fn(*args, **kwargs) raises a one-line ValueError naming
  `field`; returns the message."""
  with pytest.raises(ValueError) as e:
    fn(*args, **kwargs)
  message = str(e.value)
  assert field in message and '\n' not in message, message
  return message


def test_unknown_name_lists_the_valid_names():
  message = _raises('name', models.create_model, 'mobilenet_v4')
  for name in NAMES:
    assert name in message


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('alpha', [0, -0.5])
def test_alpha_must_be_positive(name, alpha):
  _raises('alpha', models.create_model, name, alpha=alpha)


@pytest.mark.parametrize('name', V1_NAMES)
def test_v1_rejects_expansion(name):
  _raises('expansion', models.create_model, name, expansion=6)


@pytest.mark.parametrize('name', ['mobilenet_v2', 'mobilenet_v3_small'])
@pytest.mark.parametrize('expansion', [0, -1])
def test_expansion_must_be_positive(name, expansion):
  _raises('expansion', models.create_model, name, expansion=expansion)


@pytest.mark.parametrize('dtype', ['float64', 'int32', 'not_a_dtype'])
def test_bad_dtype(dtype):
  message = _raises('dtype', models.create_model, 'mobilenet_v2', dtype=dtype)
  assert 'bfloat16' in message


@pytest.mark.parametrize('num_classes', [0, -3, 2.5, '10', True,
                                         np.int64(-2)])
def test_bad_num_classes(num_classes):
  _raises('num_classes', models.create_model, 'mobilenet_v1',
          num_classes=num_classes)


@pytest.mark.parametrize('rate', [-0.1, 1.0, 1.5])
def test_bad_dropout_rate(rate):
  _raises('dropout_rate', models.create_model, 'mobilenet_v1',
          dropout_rate=rate)


def test_batch_norm_defaults_follow_keras():
  # Keras Applications: V1 momentum 0.99 (the Keras default), V2 and V3
  # 0.999; V4 0.99 (TF Model Garden); epsilon 1e-3 everywhere.
  for name in NAMES:
    model = models.create_model(name)
    assert model.bn_momentum == (
        0.99 if name in V1_NAMES + V4_NAMES else 0.999), name
    assert model.bn_epsilon == 1e-3
  assert models.create_model('mobilenet_v2', bn_momentum=0.9).bn_momentum == 0.9


def test_input_resolution():
  # The V1 paper's resolutions: rho in {1, 6/7, 5/7, 4/7} at base 224.
  for rho, side in [(1, 224), (6 / 7, 192), (5 / 7, 160), (4 / 7, 128)]:
    assert models.input_resolution(rho) == side
  assert models.input_resolution(0.5, 320) == 160
  assert models.input_resolution(32 / 224) == 32
  _raises('resolution', models.input_resolution, 0.1)  # 22 pixels
  _raises('resolution', models.input_resolution, 1.0, 16)
  _raises('rho', models.input_resolution, 0)


@pytest.mark.parametrize('shape', [(1, 16, 16, 3), (1, 64, 16, 3)])
def test_model_rejects_images_below_32(shape):
  model = models.create_model('mobilenet_v3_small', **SMALL)
  _raises('resolution', jax.eval_shape, model.init, jax.random.key(0),
          jax.ShapeDtypeStruct(shape, jnp.float32))


def test_model_rejects_non_nhwc_images():
  model = models.create_model('mobilenet_v3_small', **SMALL)
  _raises('images', jax.eval_shape, model.init, jax.random.key(0),
          jax.ShapeDtypeStruct((32, 32, 3), jnp.float32))


def test_bad_padding():
  message = _raises('padding', models.create_model, 'mobilenet_v2',
                    padding='SAME')
  assert "['same', 'symmetric']" in message


@pytest.mark.parametrize('size, equal', [(65, True), (64, False)])
def test_symmetric_padding_equals_same_exactly_at_odd_sizes(size, equal):
  # At 65 px every stride-2 layer sees an odd side, where TF's 'SAME' pads
  # k // 2 on both sides as PyTorch does; at 64 px they differ (docs/design.md).
  images = jnp.asarray(np.random.default_rng(0).normal(
      size=(1, size, size, 3)), jnp.float32)
  same, symmetric = (models.create_model('mobilenet_v3_small', **SMALL,
                                         padding=padding, ops='reference')
                     for padding in ('same', 'symmetric'))
  variables = same.init(jax.random.key(0), images)
  a, b = same.apply(variables, images), symmetric.apply(variables, images)
  assert np.allclose(a, b, rtol=1e-5, atol=1e-6) == equal


@pytest.mark.parametrize('name, activation', [
    ('mobilenet_v4_hybrid_medium', 'relu'), ('mobilenet_v4_hybrid_large',
                                             'gelu'),
    ('mobilenet_v4_conv_large', 'relu')])
def test_v4_activations(name, activation):
  # timm: Hybrid-L's act_layer is GELU (every layer), the others' ReLU.
  for layer in models.plan_layers(models.REGISTRY[name]):
    args = dict(layer.args)
    if layer.kind != 'mqa':
      assert args['activation'] == activation, layer.name
  assert models.REGISTRY[name].head.activation == activation


def test_hybrid_layer_scale_starts_at_1e_5():
  # timm's layer_scale_init_value for the hybrids; none in Conv-M.
  _, variables = _abstract('mobilenet_v4_hybrid_medium', 64, 64, alpha=0.25)
  plan = models.plan_layers(models.REGISTRY['mobilenet_v4_hybrid_medium'])
  scaled = {l.name for l in plan if l.kind in ('uib', 'mqa')}
  assert scaled == {k for k, v in variables['params'].items()
                    if 'layer_scale' in v}
  assert dict(plan[8].args)['layer_scale'] == 1e-5
  _, conv = _abstract('mobilenet_v4_conv_medium', 64, 64, alpha=0.25)
  assert not any('layer_scale' in v for v in conv['params'].values())
