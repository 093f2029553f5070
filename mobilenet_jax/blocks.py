"""The MobileNet blocks: V1's depthwise-separable pair, V2/V3's inverted
residual, V4's universal inverted bottleneck, fused inverted bottleneck and
Mobile MQA. (V1's table 4 baseline uses plain `ConvBN` layers in their
place.)

Each block receives an `ops.OpSet` and builds its layers through it; with
`ops.OP_SETS['reference']` every layer is `layers.ConvBN` (plain Flax) or
`layers.SqueezeExcite`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenet_jax import layers
from mobilenet_jax import ops as ops_lib


def _kw(default):
  return dataclasses.field(default=default, kw_only=True)


class Block(nn.Module):
  """What every block shares: the op set, BatchNorm settings, convolution
  padding ('same' or 'symmetric', `layers.conv_padding`) and compute
  dtype (keyword-only, so that each block lists its own fields first), its
  layers built through `conv_bn`, and the identity shortcut."""
  ops: ops_lib.OpSet = _kw(ops_lib.OP_SETS['reference'])
  bn_momentum: float = _kw(0.99)
  bn_epsilon: float = _kw(1e-3)
  padding: str = _kw('same')
  dtype: Any = _kw(jnp.float32)
  float32_weight_grads: bool = _kw(True)

  def conv_bn(self, features: int, kernel_size: int, strides: int,
              activation: str, *, name: str, depthwise: bool = False):
    return self.ops.conv_bn(features, kernel_size, strides, activation,
                            depthwise=depthwise, name=name,
                            bn_momentum=self.bn_momentum,
                            bn_epsilon=self.bn_epsilon, padding=self.padding,
                            dtype=self.dtype,
                            float32_weight_grads=self.float32_weight_grads)

  def scale_layer(self, x, init: float | None):
    """x times a learned per-channel `layer_scale` started at `init` (CaiT's
    LayerScale; the V4 hybrids' UIB and MQA blocks, init 1e-5); x itself
    when `init` is None."""
    if init is None:
      return x
    gamma = self.param('layer_scale', nn.initializers.constant(init),
                       (x.shape[-1],), jnp.float32)
    return x * gamma.astype(x.dtype)

  def residual(self, x, shortcut):
    """x + shortcut when the stride is 1 and the width is unchanged."""
    if self.strides == 1 and shortcut.shape[-1] == self.features:
      return x + shortcut
    return x


class DepthwiseSeparable(Block):
  """V1 (paper figure 3, right): 3x3 depthwise -> BN -> act, 1x1 -> BN -> act."""
  features: int
  strides: int = 1
  activation: str = 'relu6'

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.conv_bn(x.shape[-1], 3, self.strides, self.activation,
                     name='depthwise', depthwise=True)(x, train)
    return self.conv_bn(self.features, 1, 1, self.activation,
                        name='pointwise')(x, train)


class InvertedResidual(Block):
  """V2 (paper figure 3b, table 1) and V3 (paper figure 4) bottleneck.

  1x1 expansion -> act (skipped when `expanded == input width`), k x k
  depthwise -> act, optional squeeze-and-excite, linear 1x1 projection;
  identity shortcut when the stride is 1 and the width is unchanged.
  """
  expanded: int
  features: int
  kernel_size: int = 3
  strides: int = 1
  activation: str = 'relu6'
  se_features: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    shortcut = x
    if self.expanded != x.shape[-1]:
      x = self.conv_bn(self.expanded, 1, 1, self.activation,
                       name='expand')(x, train)
    x = self.conv_bn(self.expanded, self.kernel_size, self.strides,
                     self.activation, name='depthwise',
                     depthwise=True)(x, train)
    if self.se_features:
      x = self.ops.squeeze_excite(
          self.se_features, dtype=self.dtype,
          float32_weight_grads=self.float32_weight_grads, name='se')(x)
    x = self.conv_bn(self.features, 1, 1, 'identity', name='project')(x, train)
    return self.residual(x, shortcut)


class UniversalInvertedBottleneck(Block):
  """V4's Universal Inverted Bottleneck (UIB; the paper's section 'Universal
  Inverted Bottlenecks', its figure of the four instantiations).

  Optional k x k depthwise -> BN (`start_kernel_size`, no activation), 1x1
  expansion -> act, optional k x k depthwise -> act (`middle_kernel_size`),
  linear 1x1 projection; identity shortcut when the stride is 1 and the
  width is unchanged. Kernel size 0 leaves a depthwise out: middle only is
  V2's inverted residual (IB), start only ConvNeXt-like, both ExtraDW,
  neither an FFN. The stride sits on the middle depthwise, or on the start
  one without it (TF Model Garden, timm). Unlike `InvertedResidual`, the
  expansion is always there (as in both). `layer_scale`: the initial
  layer scale after the projection (the hybrids'), None for none.
  """
  expanded: int
  features: int
  start_kernel_size: int = 0
  middle_kernel_size: int = 3
  strides: int = 1
  activation: str = 'relu'
  layer_scale: float | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.strides != 1 and not (self.start_kernel_size
                                  or self.middle_kernel_size):
      raise ValueError('strides must be 1 for a UIB without a depthwise '
                       f'conv, got {self.strides}')
    shortcut = x
    if self.start_kernel_size:
      start_strides = 1 if self.middle_kernel_size else self.strides
      x = self.conv_bn(x.shape[-1], self.start_kernel_size, start_strides,
                       'identity', name='start_depthwise',
                       depthwise=True)(x, train)
    x = self.conv_bn(self.expanded, 1, 1, self.activation,
                     name='expand')(x, train)
    if self.middle_kernel_size:
      x = self.conv_bn(self.expanded, self.middle_kernel_size, self.strides,
                       self.activation, name='depthwise',
                       depthwise=True)(x, train)
    x = self.conv_bn(self.features, 1, 1, 'identity', name='project')(x, train)
    return self.residual(self.scale_layer(x, self.layer_scale), shortcut)


class FusedInvertedBottleneck(Block):
  """V4's fused inverted bottleneck (FusedIB, the Conv-M/L stems): k x k
  expansion conv -> BN -> act, linear 1x1 projection; identity shortcut when
  the stride is 1 and the width is unchanged."""
  expanded: int
  features: int
  kernel_size: int = 3
  strides: int = 1
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x, train: bool = False):
    shortcut = x
    x = self.conv_bn(self.expanded, self.kernel_size, self.strides,
                     self.activation, name='expand')(x, train)
    x = self.conv_bn(self.features, 1, 1, 'identity', name='project')(x, train)
    return self.residual(x, shortcut)


class MultiQueryAttention(nn.Module):
  """softmax(q k^T / sqrt(d)) v with `heads` query heads sharing one key
  head and one value head (multi-query attention, Shazeer 2019; the V4
  paper's Mobile MQA equation). q: (N, L, heads, d), k: (N, S, d),
  v: (N, S, d_v) -> (N, L, heads, d_v). No variables: a module of its own
  so that `costs` counts its two matmuls (L * heads * S * (d + d_v)
  multiply-adds). Softmax in float32."""

  @nn.compact
  def __call__(self, q, k, v):
    logits = jnp.einsum('nlhd,nsd->nlhs', q, k) / jnp.sqrt(
        jnp.asarray(q.shape[-1], q.dtype))
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.einsum('nlhs,nsd->nlhd', weights.astype(v.dtype), v)


class MobileMQA(Block):
  """V4's Mobile MQA block (the paper's section 'Mobile MQA'; timm's
  `MobileAttention` with `MultiQueryAttention2d`, TF Model Garden's
  `MultiHeadSelfAttentionBlock` with `OptimizedMultiQueryAttentionLayer
  WithDownSampling`).

  BatchNorm pre-norm ('norm'); 1x1 query projection to heads x key_dim
  ('query'); one key and one value head, each a `kernel_size` depthwise
  conv of stride `kv_stride` + BN ('key_down', 'value_down'; only when
  kv_stride > 1) then a 1x1 projection to key_dim ('key', 'value');
  `MultiQueryAttention` over all positions; 1x1 output projection
  ('output'); layer scale; identity shortcut when the width is unchanged.
  The projections have no bias and start Xavier-uniform (timm's init).
  The cpu op set computes this block in plain Flax but for the downsampling
  convs (its `conv_bn`).
  """
  heads: int
  key_dim: int
  features: int
  kv_stride: int = 1
  kernel_size: int = 3
  layer_scale: float | None = None

  def _project(self, features: int, name: str):
    return nn.Conv(features, (1, 1), use_bias=False,
                   kernel_init=nn.initializers.xavier_uniform(),
                   dtype=self.dtype, name=name,
                   **layers.low_precision_kwargs(self.dtype))

  def _key_or_value(self, x, name: str, train: bool):
    if self.kv_stride > 1:
      x = self.conv_bn(x.shape[-1], self.kernel_size, self.kv_stride,
                       'identity', name=f'{name}_down',
                       depthwise=True)(x, train)
    x = self._project(self.key_dim, name)(x)
    return x.reshape(x.shape[0], -1, self.key_dim)

  @nn.compact
  def __call__(self, x, train: bool = False):
    shortcut = x
    n, h, w, _ = x.shape
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype,
                     name='norm')(x)
    q = self._project(self.heads * self.key_dim, 'query')(x).reshape(
        n, h * w, self.heads, self.key_dim)
    k = self._key_or_value(x, 'key', train)
    v = self._key_or_value(x, 'value', train)
    o = MultiQueryAttention(name='attention')(q, k, v)
    x = self._project(self.features, 'output')(
        o.reshape(n, h, w, self.heads * self.key_dim))
    x = self.scale_layer(x, self.layer_scale)
    return x + shortcut if shortcut.shape[-1] == self.features else x
