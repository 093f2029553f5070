"""The `cpu` op set's modules: the reference layers (`mobilenet_jax.layers`)
computed with XLA:CPU kernels.

Each module takes the arguments of its reference counterpart and owns the
same variables under the same names ('conv'/'kernel', 'bn'/'scale', 'bias',
'mean', 'var'; SE 'reduce'/'expand'), so a checkpoint of one op set is a
checkpoint of the other. What differs is how they compute:

- `DepthwiseConv`: shifted slices with a hand-written backward pass
  (`cpu.depthwise`) instead of a grouped convolution;
- 1x1 convolutions as dots over channels, the stems' k x k convolution of
  the RGB image as a dot over its patches (`cpu.dots`);
- `cpu.batch_norm.BatchNorm`: a closed-form backward pass;
- `PointwiseConvBN`: in training, a 1x1 expansion folded into its BatchNorm
  (`cpu.batch_norm.normalize_pointwise_batch`).

`conv_bn` picks the module for a `layers.ConvBN`'s arguments.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax import layers
from mobilenet_jax.cpu import batch_norm
from mobilenet_jax.cpu import depthwise
from mobilenet_jax.cpu import dots


class DepthwiseConv(nn.Module):
  """A k x k depthwise convolution (no bias) with the kernel of
  `nn.Conv(feature_group_count=C)`: shape (k, k, 1, C), name 'kernel'."""
  kernel_size: int
  strides: int = 1
  padding: str = 'same'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', layers.KERNEL_INIT,
                        (self.kernel_size, self.kernel_size, 1, x.shape[-1]),
                        jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return depthwise.depthwise_conv(x, kernel, self.strides, self.padding)


class ConvBN(layers.ConvBN):
  """`layers.ConvBN` (the same fields) with the depthwise convolution as
  `DepthwiseConv`, the others through `dots.conv` and the BatchNorm
  `batch_norm.BatchNorm`."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.strides, self.padding,
                        dtype=self.dtype, name='conv')(x)
    else:
      x = dots.conv(self.features, self.kernel_size, self.strides,
                    self.padding, use_bias=False, kernel_init=layers.KERNEL_INIT,
                    dtype=self.dtype, name='conv')(x)
    return layers.ACTIVATIONS[self.activation](self._batch_norm(train)(x))

  def _batch_norm(self, train: bool) -> batch_norm.BatchNorm:
    return batch_norm.BatchNorm(
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, name='bn')


class PointwiseKernel(nn.Module):
  """The (1, 1, K, features) kernel of a 1x1 convolution, as `nn.Conv`
  names and initialises it, returned as (K, features)."""
  features: int

  @nn.compact
  def __call__(self, x):
    return self.param('kernel', layers.KERNEL_INIT,
                      (1, 1, x.shape[-1], self.features), jnp.float32)[0, 0]


class PointwiseConvBN(ConvBN):
  """`ConvBN` for a 1x1, stride-1 convolution. In float32 training, an
  expansion (at least twice the input's channels) is folded into its
  BatchNorm (`batch_norm.normalize_pointwise_batch`): the statistics come
  from the input's K x K Gram matrix, whose cost is at most half the
  convolution's multiply-adds, and the output from one dot."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not (train and 2 * x.shape[-1] <= self.features
            and self.dtype == jnp.float32 and x.dtype == jnp.float32):
      x = dots.conv(self.features, use_bias=False,
                    kernel_init=layers.KERNEL_INIT, dtype=self.dtype,
                    name='conv')(x)
      return layers.ACTIVATIONS[self.activation](self._batch_norm(train)(x))
    kernel = PointwiseKernel(self.features, name='conv')(x)
    return layers.ACTIVATIONS[self.activation](
        self._batch_norm(train)(x, pointwise_kernel=kernel))


class SqueezeExcite(layers.SqueezeExcite):
  """`layers.SqueezeExcite` with its 1x1 convolutions as dots."""

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(dots.conv(self.squeeze_features, dtype=self.dtype,
                          name='reduce')(s))
    s = dots.conv(x.shape[-1], dtype=self.dtype, name='expand')(s)
    return x * layers.hard_sigmoid(s)


def conv_bn(features: int, kernel_size: int = 1, strides: int = 1,
            activation: str = 'relu', depthwise: bool = False,
            **kwargs) -> nn.Module:
  """The module for `layers.ConvBN(features, kernel_size, ...)`:
  `PointwiseConvBN` for a 1x1 stride-1 convolution, else `ConvBN`."""
  pointwise = (kernel_size, strides, depthwise) == (1, 1, False)
  module = PointwiseConvBN if pointwise else ConvBN
  return module(features, kernel_size, strides, activation, depthwise,
                **kwargs)
