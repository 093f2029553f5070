"""The papers' layers in plain Flax Linen: activations, rounding, conv + BN, SE.

These are the `reference` op set (`mobilenet_jax.ops`): `nn.Conv` for every
convolution, depthwise ones as `nn.Conv(feature_group_count=C)`,
`nn.BatchNorm`, no custom gradients. Conventions follow the authors'
TensorFlow references (TF-slim, Keras Applications): NHWC, 'SAME' padding
(the extra pixel after, on stride 2), BatchNorm epsilon 1e-3.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


def relu6(x):
  """min(max(x, 0), 6), MobileNet V1/V2's activation.

  Its derivative is 1 on (0, 6) and 0 elsewhere, one select, as TensorFlow's
  Relu6Grad (`jax.nn.relu6`). Autodiff of min(max(...)) gives 1/2 at the
  kinks instead, through compares and two divides per element that cost
  more than the rest of the activation's backward pass on CPU.
  """
  return jax.nn.relu6(x)


def hard_sigmoid(x):
  """relu6(x + 3) / 6: V3 paper, section 5.2, the piecewise-linear sigmoid."""
  return relu6(x + 3) / 6


def hard_swish(x):
  """x * relu6(x + 3) / 6: V3 paper, equation (2)."""
  return x * hard_sigmoid(x)


ACTIVATIONS: dict[str, Activation] = {
    'relu': nn.relu,
    'relu6': relu6,
    'hard_swish': hard_swish,
    'identity': lambda x: x,
}


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a channel count to a multiple of `divisor`, never losing over 10%.

  The rounding of the V2/V3 reference code (TF-slim `_make_divisible`):
  round to the nearest multiple, at least `divisor`, plus one `divisor` if
  that fell below 0.9 * value.
  """
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


# He-normal over the outputs, as the TF references (MnasNet, Keras
# Applications' V3). For a depthwise kernel, shape (k, k, 1, C), that is
# variance 2 / (k*k*C): the scale of Keras' DepthwiseConv2D default
# (glorot_uniform on its (k, k, C, 1) kernel: 2 / (k*k*(C + 1))). TF
# MnasNet/EfficientNet use 2 / (k*k) for depthwise kernels instead; with it
# the default recipe trained slower (86.6% against 93.5% test top-1 at 800
# steps).
KERNEL_INIT = nn.initializers.variance_scaling(2.0, 'fan_out',
                                               'truncated_normal')


class ConvBN(nn.Module):
  """Convolution (no bias, 'SAME') -> BatchNorm -> activation.

  `depthwise=True` makes the convolution depthwise: one k x k filter per
  input channel (`feature_group_count` = channels, output channels = input
  channels, `features` ignored), V1 paper section 3.1.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  activation: str = 'relu'
  depthwise: bool = False
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    groups = x.shape[-1] if self.depthwise else 1
    x = nn.Conv(x.shape[-1] if self.depthwise else self.features,
                (self.kernel_size, self.kernel_size), self.strides,
                padding='SAME', feature_group_count=groups, use_bias=False,
                kernel_init=KERNEL_INIT, dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype, name='bn')(x)
    return ACTIVATIONS[self.activation](x)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation as in MobileNetV3 (paper section 5.3, figure 4).

  Global average pool -> 1x1 conv to `squeeze_features` (bias) -> ReLU ->
  1x1 conv back to the input width (bias) -> hard-sigmoid gate -> rescale.
  """
  squeeze_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.Conv(self.squeeze_features, (1, 1), dtype=self.dtype,
                name='reduce')(s)
    s = nn.relu(s)
    s = nn.Conv(channels, (1, 1), dtype=self.dtype, name='expand')(s)
    return x * hard_sigmoid(s)
