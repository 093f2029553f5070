"""The MobileNet blocks: V1's depthwise-separable pair and V2/V3's inverted
residual. (V1's table 4 baseline uses plain `ConvBN` layers in their place.)

Each block receives an `ops.OpSet` and builds its layers through it; with
`ops.OP_SETS['reference']` every layer is `layers.ConvBN` (plain Flax) or
`layers.SqueezeExcite`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax import ops as ops_lib


class DepthwiseSeparable(nn.Module):
  """V1 (paper figure 3, right): 3x3 depthwise -> BN -> act, 1x1 -> BN -> act."""
  features: int
  strides: int = 1
  activation: str = 'relu6'
  ops: ops_lib.OpSet = ops_lib.OP_SETS['reference']
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
              dtype=self.dtype)
    x = self.ops.conv_bn(x.shape[-1], 3, self.strides, self.activation,
                         depthwise=True, name='depthwise', **bn)(x, train)
    return self.ops.conv_bn(self.features, 1, 1, self.activation,
                            name='pointwise', **bn)(x, train)


class InvertedResidual(nn.Module):
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
  ops: ops_lib.OpSet = ops_lib.OP_SETS['reference']
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
              dtype=self.dtype)
    shortcut = x
    if self.expanded != x.shape[-1]:
      x = self.ops.conv_bn(self.expanded, 1, 1, self.activation,
                           name='expand', **bn)(x, train)
    x = self.ops.conv_bn(self.expanded, self.kernel_size, self.strides,
                         self.activation, depthwise=True, name='depthwise',
                         **bn)(x, train)
    if self.se_features:
      x = self.ops.squeeze_excite(self.se_features, dtype=self.dtype,
                                  name='se')(x)
    x = self.ops.conv_bn(self.features, 1, 1, 'identity', name='project',
                         **bn)(x, train)
    if self.strides == 1 and shortcut.shape[-1] == self.features:
      x = x + shortcut
    return x
