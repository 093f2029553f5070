"""The MobileNet blocks: V1's depthwise-separable pair and V2/V3's inverted
residual. (V1's table 4 baseline uses plain `ConvBN` layers in their place.)"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax.layers import ConvBN, SqueezeExcite


class DepthwiseSeparable(nn.Module):
  """V1 (paper figure 3, right): 3x3 depthwise -> BN -> act, 1x1 -> BN -> act."""
  features: int
  strides: int = 1
  activation: str = 'relu6'
  depthwise_impl: str = 'grouped'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
              dtype=self.dtype, activation=self.activation)
    x = ConvBN(x.shape[-1], 3, self.strides, depthwise=True,
               depthwise_impl=self.depthwise_impl, name='depthwise', **bn)(
                   x, train)
    return ConvBN(self.features, 1, name='pointwise', **bn)(x, train)


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
  depthwise_impl: str = 'grouped'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
              dtype=self.dtype)
    shortcut = x
    if self.expanded != x.shape[-1]:
      x = ConvBN(self.expanded, 1, activation=self.activation, name='expand',
                 **bn)(x, train)
    x = ConvBN(self.expanded, self.kernel_size, self.strides, self.activation,
               depthwise=True, depthwise_impl=self.depthwise_impl,
               name='depthwise', **bn)(x, train)
    if self.se_features:
      x = SqueezeExcite(self.se_features, dtype=self.dtype, name='se')(x)
    x = ConvBN(self.features, 1, activation='identity', name='project',
               **bn)(x, train)
    if self.strides == 1 and shortcut.shape[-1] == self.features:
      x = x + shortcut
    return x
