"""Building layers shared by every MobileNet: activations, rounding, conv + BN, SE.

Conventions follow the authors' TensorFlow references (TF-slim, Keras
Applications): NHWC, 'SAME' padding, BatchNorm epsilon 1e-3.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax import batch_norm
from mobilenet_jax import depthwise

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot_over_channels(x, w, precision):
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())),
                         precision=precision)


def _dot_over_channels_fwd(x, w, precision):
  return _dot_over_channels(x, w, precision), (x, w)


def _dot_over_channels_bwd(precision, residuals, g):
  """dL/dx = g w^T; dL/dw = x^T g over all positions, with the narrower of x
  and g as that dot's first operand. XLA's CPU backend writes the first
  operand out transposed, fused with whatever produced it; autodiff put the
  cotangent there, which for an expansion layer (6x wider than its input)
  cost a fifth of a MobileNetV2 train step (README, Speed)."""
  x, w = residuals
  dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())),
                       precision=precision)
  x, g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  over_positions = (((0,), (0,)), ((), ()))
  if x.shape[1] <= g.shape[1]:
    dw = lax.dot_general(x, g, over_positions, precision=precision)
  else:
    dw = lax.dot_general(g, x, over_positions, precision=precision).T
  return dx, dw


_dot_over_channels.defvjp(_dot_over_channels_fwd, _dot_over_channels_bwd)


def pointwise_as_dot(inputs, kernel, window_strides, padding, *,
                     lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1,
                     precision=None):
  """A 1x1, stride-1 NHWC convolution computed as a dot over channels.

  Drop-in for `lax.conv_general_dilated` in `nn.Conv` (same parameters, so
  checkpoints, cost accounting and Keras conversion are unchanged). XLA's CPU
  backend runs a 1x1 convolution about half as fast as the same dot (the
  speed issue's measurement); on TPU and GPU both become the same matmul.
  Its backward pass is `_dot_over_channels_bwd`.
  """
  del padding, lhs_dilation, rhs_dilation, dimension_numbers  # no-ops at 1x1
  if (kernel.shape[:2] != (1, 1) or tuple(window_strides) != (1, 1)
      or feature_group_count != 1):
    raise ValueError('pointwise_as_dot computes only 1x1, stride-1, '
                     f'ungrouped convolutions; got kernel {kernel.shape}, '
                     f'strides {window_strides}')
  return _dot_over_channels(inputs, kernel[0, 0], precision)


# Inputs with more channels than this keep XLA's convolution in
# `patches_as_dot`: their k*k patch copies would cost more than it saves.
PATCHES_AS_DOT_MAX_CHANNELS = 4


def patches_as_dot(inputs, kernel, window_strides, padding, *,
                   lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1,
                   precision=None):
  """A k x k 'SAME' convolution of a few-channel NHWC input (the stems' RGB
  image) as one dot over its k*k*C patches (im2col).

  Drop-in for `lax.conv_general_dilated` in `nn.Conv`, same parameters.
  XLA's CPU backend runs the stems' 3x3 stride-2 convolution on 3 channels
  slower than the dot over its 27-value patches: the V2 224/32 inference
  step took 374 ms against 398 (median; README, Speed). Inputs with more
  than PATCHES_AS_DOT_MAX_CHANNELS channels go to `lax.conv_general_dilated`.
  """
  del dimension_numbers  # NHWC and HWIO: nn.Conv's, and the patches' order.
  dilated = any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                             *(rhs_dilation or ())))
  if (padding != 'SAME' or dilated or feature_group_count != 1
      or len(set(window_strides)) != 1):
    raise ValueError('patches_as_dot computes only undilated, ungrouped '
                     "'SAME' convolutions with equal strides; got padding "
                     f'{padding!r}, strides {window_strides}, dilations '
                     f'{lhs_dilation}, {rhs_dilation}, feature_group_count '
                     f'{feature_group_count}')
  if inputs.shape[-1] > PATCHES_AS_DOT_MAX_CHANNELS:
    return lax.conv_general_dilated(
        inputs, kernel, window_strides, padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)
  kernel_size, strides = kernel.shape[0], window_strides[0]
  channels = inputs.shape[-1]
  width = kernel_size * kernel_size * channels
  # Tap (a, b), channel c is patch entry (a*k + b)*C + c: the row-major
  # flattening of the (k, k, C, features) kernel. Each window is padded to
  # its place among the patch entries and the windows added, which XLA:CPU
  # fuses into one pass writing the patches; concatenated, every window was
  # copied out and then copied into place (the V2 224/32 inference step's
  # time: paired median ratio 0.956, 30 interleaved steps, 2026-12-03).
  patches = None
  for tap, (_, window) in enumerate(depthwise.windows(inputs, kernel_size,
                                                      strides)):
    start = tap * channels
    placed = jnp.pad(window,
                     [(0, 0)] * 3 + [(start, width - start - channels)])
    patches = placed if patches is None else patches + placed
  return _dot_over_channels(patches, kernel.reshape(-1, kernel.shape[-1]),
                            precision)


def conv(features: int, kernel_size: int = 1, strides: int = 1, **kwargs):
  """An `nn.Conv` with 'SAME' padding: 1x1 stride-1 ones run as a dot over
  channels, k x k ones (k > 1) as a dot over patches when their input has
  few channels."""
  if kernel_size == 1 and strides == 1:
    conv_general_dilated = pointwise_as_dot
  elif kernel_size > 1:
    conv_general_dilated = patches_as_dot
  else:
    conv_general_dilated = lax.conv_general_dilated
  return nn.Conv(features, (kernel_size, kernel_size), strides=strides,
                 padding='SAME', conv_general_dilated=conv_general_dilated,
                 **kwargs)


class DepthwiseConv(nn.Module):
  """A k x k depthwise convolution: one filter per channel, no bias.

  The kernel has Flax's grouped-conv shape (k, k, 1, C). Every depthwise
  convolution of every model goes through this one layer, so `impl` selects
  its implementation everywhere at once (see `mobilenet_jax.depthwise`).
  """
  kernel_size: int
  strides: int = 1
  impl: str = 'grouped'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    # Variance 2 / (k*k*C): the scale of Keras' DepthwiseConv2D default
    # (glorot_uniform on its (k, k, C, 1) kernel: 2 / (k*k*(C + 1))).
    # TF MnasNet/EfficientNet use 2 / (k*k) instead; with it the default
    # recipe trained slower (86.6% against 93.5% test top-1 at 800 steps).
    kernel = self.param(
        'kernel',
        nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal'),
        (self.kernel_size, self.kernel_size, 1, channels),
        self.param_dtype,
    )
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return depthwise.depthwise_conv(x, kernel, self.strides, self.impl)


class PointwiseKernel(nn.Module):
  """The (1, 1, K, features) kernel of a 1x1 convolution, as `nn.Conv`
  names and initialises it, for a layer that applies it itself."""
  features: int
  kernel_init: Callable

  @nn.compact
  def __call__(self, x):
    return self.param('kernel', self.kernel_init,
                      (1, 1, x.shape[-1], self.features), jnp.float32)[0, 0]


class ConvBN(nn.Module):
  """Convolution (no bias) -> BatchNorm -> activation.

  `depthwise=True` makes the convolution a `DepthwiseConv` (output channels =
  input channels, `features` ignored). In training, a float32 1x1 expansion
  (at least twice the input's channels) is folded into BatchNorm
  (`batch_norm.normalize_pointwise_batch`): the same variables and values,
  less memory traffic (the V2 224/32 train step's median went from 1085 to
  995 ms; README, Speed).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  activation: str = 'relu'
  depthwise: bool = False
  depthwise_impl: str = 'grouped'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = batch_norm.BatchNorm(
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, name='bn')
    kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out',
                                                   'truncated_normal')
    if self.depthwise:
      x = DepthwiseConv(self.kernel_size, self.strides, self.depthwise_impl,
                        dtype=self.dtype, name='conv')(x)
    elif self._normalizes_pointwise_expansion(x, train):
      kernel = PointwiseKernel(self.features, kernel_init, name='conv')(x)
      return ACTIVATIONS[self.activation](bn(x, pointwise_kernel=kernel))
    else:
      x = conv(self.features, self.kernel_size, self.strides, use_bias=False,
               kernel_init=kernel_init, dtype=self.dtype, name='conv')(x)
    return ACTIVATIONS[self.activation](bn(x))

  def _normalizes_pointwise_expansion(self, x, train: bool) -> bool:
    """Whether training folds the convolution into BatchNorm
    (`batch_norm.normalize_pointwise_batch`): float32 1x1 stride-1
    convolutions that at least double the channels, where its K x K
    statistics cost at most half the convolution's multiply-adds."""
    return (train and self.kernel_size == 1 and self.strides == 1
            and 2 * x.shape[-1] <= self.features
            and self.dtype == jnp.float32 and x.dtype == jnp.float32)


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
    s = conv(self.squeeze_features, dtype=self.dtype, name='reduce')(s)
    s = nn.relu(s)
    s = conv(channels, dtype=self.dtype, name='expand')(s)
    return x * hard_sigmoid(s)
