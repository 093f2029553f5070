"""Convolutions as dots, for the `cpu` op set: 1x1 convolutions as a dot over
channels, the stems' k x k convolution of the RGB image as a dot over its
patches (im2col). Both are drop-ins for `lax.conv_general_dilated` inside
`nn.Conv`, so the parameters are the reference's `nn.Conv`'s.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax import layers
from mobilenet_jax.cpu import depthwise


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
  cost a fifth of a MobileNetV2 train step on CPU."""
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

  Drop-in for `lax.conv_general_dilated` in `nn.Conv` (same parameters).
  XLA's CPU backend runs a 1x1 convolution about half as fast as the same
  dot. Its backward pass is `_dot_over_channels_bwd`.
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
  """A k x k convolution of a few-channel NHWC input (the stems' RGB image)
  as one dot over its k*k*C patches (im2col), padded 'SAME' or
  symmetrically (`nn.Conv`'s padding pairs ((k//2, k//2), (k//2, k//2))).

  Drop-in for `lax.conv_general_dilated` in `nn.Conv`, same parameters.
  XLA's CPU backend runs the stems' 3x3 stride-2 convolution on 3 channels
  slower than the dot over its 27-value patches. Inputs with more than
  PATCHES_AS_DOT_MAX_CHANNELS channels go to `lax.conv_general_dilated`.
  """
  del dimension_numbers  # NHWC and HWIO: nn.Conv's, and the patches' order.
  dilated = any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                             *(rhs_dilation or ())))
  kernel_size, strides = kernel.shape[0], window_strides[0]
  symmetric = ((kernel_size // 2, kernel_size // 2),) * 2
  if ((padding != 'SAME' and tuple(map(tuple, padding)) != symmetric)
      or dilated or feature_group_count != 1
      or len(set(window_strides)) != 1):
    raise ValueError('patches_as_dot computes only undilated, ungrouped '
                     "'SAME' or symmetrically padded convolutions with equal "
                     'strides; got padding '
                     f'{padding!r}, strides {window_strides}, dilations '
                     f'{lhs_dilation}, {rhs_dilation}, feature_group_count '
                     f'{feature_group_count}')
  if inputs.shape[-1] > PATCHES_AS_DOT_MAX_CHANNELS:
    return lax.conv_general_dilated(
        inputs, kernel, window_strides, padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)
  channels = inputs.shape[-1]
  width = kernel_size * kernel_size * channels
  # Tap (a, b), channel c is patch entry (a*k + b)*C + c: the row-major
  # flattening of the (k, k, C, features) kernel. Each window is padded to
  # its place among the patch entries and the windows added, which XLA:CPU
  # fuses into one pass writing the patches; concatenated, every window was
  # copied out and then copied into place.
  patches = None
  windows = depthwise.windows(inputs, kernel_size, strides,
                              'same' if padding == 'SAME' else 'symmetric')
  for tap, (_, window) in enumerate(windows):
    start = tap * channels
    placed = jnp.pad(window,
                     [(0, 0)] * 3 + [(start, width - start - channels)])
    patches = placed if patches is None else patches + placed
  return _dot_over_channels(patches, kernel.reshape(-1, kernel.shape[-1]),
                            precision)


def conv(features: int, kernel_size: int = 1, strides: int = 1,
         padding: str = 'same', **kwargs):
  """An `nn.Conv` padded by `layers.conv_padding(padding, kernel_size)`,
  the same parameters as the reference's: 1x1 stride-1 ones run as a dot over channels, k x k ones
  (k > 1) as a dot over patches when their input has few channels."""
  if kernel_size == 1 and strides == 1:
    conv_general_dilated = pointwise_as_dot
  elif kernel_size > 1:
    conv_general_dilated = patches_as_dot
  else:
    conv_general_dilated = lax.conv_general_dilated
  return nn.Conv(features, (kernel_size, kernel_size), strides=strides,
                 padding=layers.conv_padding(padding, kernel_size),
                 conv_general_dilated=conv_general_dilated,
                 **kwargs)
