"""The papers' layers in plain Flax Linen: activations, rounding, conv + BN, SE.

These are the `reference` op set (`mobilenet_jax.ops`): `nn.Conv` for every
convolution, depthwise ones as `nn.Conv(feature_group_count=C)`,
`nn.BatchNorm`, no custom gradients in float32. Conventions follow the
authors' TensorFlow references (TF-slim, Keras Applications): NHWC, 'SAME'
padding (the extra pixel after, on stride 2), BatchNorm epsilon 1e-3;
`padding='symmetric'` pads as PyTorch (timm) does instead (`conv_padding`).

With a lower-precision compute dtype (bfloat16 on TPU), every `nn.Conv` and
`nn.Dense` gets `low_precision_kwargs`: the same forward pass, but weight and
bias gradients computed and summed over the batch in float32, so that their
all-reduce across devices carries float32 values (`float32_weight_grad`).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
from jax.interpreters import ad
import jax.numpy as jnp

from mobilenet_jax import config_check

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


def gelu(x):
  """The exact (erf) GELU, MobileNetV4-Hybrid-L's activation (timm's
  `nn.GELU`, TF's `tf.nn.gelu` default)."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Activation] = {
    'relu': nn.relu,
    'relu6': relu6,
    'hard_swish': hard_swish,
    'gelu': gelu,
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


def float32_weight_grad(op: Callable) -> Callable:
  """`op` (`lax.conv_general_dilated` or `lax.dot_general`) for a kernel kept
  in float32: the forward pass casts it to the input's dtype and computes
  exactly `op` in that dtype; the backward pass computes the input gradient
  as autodiff would (in the input's dtype) and the kernel gradient with
  `preferred_element_type=float32`, so the contraction over the batch
  accumulates and emits float32 and no bfloat16 rounding comes between it
  and the float32 parameter (nor its all-reduce, which the SPMD partitioner
  places at the contraction's output).

  Plain autodiff cannot say this: `op(..., preferred_element_type=f32)`
  transposes into a float32 convolution over a float32 copy of the
  activations, cast back to the kernel's dtype. The kernel gradient here is
  JAX's own transpose rule for `op`'s primitive (the same padding, dilation
  and feature-group handling), given float32 as its preferred element type.
  """

  @functools.wraps(op)
  def wrapped(lhs, rhs, *args, **kwargs):
    def forward(x, w):
      return op(x, w.astype(x.dtype), *args, **kwargs)

    @jax.custom_vjp
    def apply(x, w):
      return forward(x, w)

    def apply_fwd(x, w):
      return forward(x, w), (x, w)

    def apply_bwd(residuals, g):
      x, w = residuals
      w_low = w.astype(x.dtype)
      # The primitive and its canonical parameters (padding pairs,
      # dimension numbers, precision), as `op` binds them.
      (eqn,) = jax.make_jaxpr(lambda x, w: op(x, w, *args, **kwargs))(
          x, w_low).eqns
      transpose = ad.primitive_transposes[eqn.primitive]
      dx, _ = transpose(g, ad.UndefinedPrimal(jax.typeof(x)), w_low,
                        **eqn.params)
      params = {**eqn.params, 'preferred_element_type': jnp.float32}
      _, dw = transpose(g, x, ad.UndefinedPrimal(
          jax.typeof(w).update(dtype=jnp.float32)), **params)
      return dx, dw.astype(w.dtype)

    apply.defvjp(apply_fwd, apply_bwd)
    return apply(lhs, rhs)

  return wrapped


def _promote_inputs_only(inputs, *params, dtype=None, inexact=True):
  """A Flax `promote_dtype` that casts only the inputs to the compute dtype:
  kernel and bias stay float32 (the kernel is cast inside
  `float32_weight_grad`'s forward pass; the bias is added in float32, so its
  gradient is summed over the batch in float32)."""
  del inexact
  return (inputs if inputs is None else jnp.asarray(inputs, dtype), *params)


conv_general_dilated_f32_weight_grad = float32_weight_grad(
    lax.conv_general_dilated)
dot_general_f32_weight_grad = float32_weight_grad(lax.dot_general)


def low_precision_kwargs(dtype: Any, dense: bool = False,
                         float32_weight_grads: bool = True) -> dict:
  """Extra `nn.Conv` (or `nn.Dense`, `dense=True`) arguments for compute
  `dtype`: none in float32 or without `float32_weight_grads` (plain Flax,
  the way out should a JAX upgrade break the custom transpose); otherwise
  float32 kernel and bias gradients (`float32_weight_grad`,
  `_promote_inputs_only`). A layer with a bias then returns float32 (its
  bias added in float32): cast its output to `dtype`."""
  if jnp.dtype(dtype) == jnp.float32 or not float32_weight_grads:
    return {}
  if dense:
    return {'promote_dtype': _promote_inputs_only,
            'dot_general': dot_general_f32_weight_grad}
  return {'promote_dtype': _promote_inputs_only,
          'conv_general_dilated': conv_general_dilated_f32_weight_grad}


PADDINGS = config_check.PADDINGS  # the allowed `padding` values


def conv_padding(padding: str, kernel_size: int):
  """`nn.Conv`'s padding for a k x k convolution: 'same' is TensorFlow's
  'SAME' (total max((out - 1) * s + k - n, 0), the extra pixel after);
  'symmetric' is PyTorch's `padding=k // 2` on both sides (timm's models).
  For odd k both give ceil(n / s) outputs; they differ in where the window
  starts when n is even and s is 2 (symmetric: one pixel earlier)."""
  config_check.one_of('padding', padding, PADDINGS)
  if padding == 'same':
    return 'SAME'
  return ((kernel_size // 2, kernel_size // 2),) * 2


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
  """Convolution (no bias, `padding`: see `conv_padding`) -> BatchNorm ->
  activation.

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
  padding: str = 'same'
  dtype: Any = jnp.float32
  float32_weight_grads: bool = True  # under a lower dtype (low_precision_kwargs)

  @nn.compact
  def __call__(self, x, train: bool = False):
    groups = x.shape[-1] if self.depthwise else 1
    x = nn.Conv(x.shape[-1] if self.depthwise else self.features,
                (self.kernel_size, self.kernel_size), self.strides,
                padding=conv_padding(self.padding, self.kernel_size),
                feature_group_count=groups, use_bias=False,
                kernel_init=KERNEL_INIT, dtype=self.dtype, name='conv',
                **low_precision_kwargs(
                    self.dtype, float32_weight_grads=self.float32_weight_grads))(x)
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
  float32_weight_grads: bool = True  # under a lower dtype (low_precision_kwargs)

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    low = low_precision_kwargs(
        self.dtype, float32_weight_grads=self.float32_weight_grads)
    s = nn.Conv(self.squeeze_features, (1, 1), dtype=self.dtype,
                name='reduce', **low)(s).astype(self.dtype)
    s = nn.relu(s)
    s = nn.Conv(channels, (1, 1), dtype=self.dtype, name='expand',
                **low)(s).astype(self.dtype)
    return x * hard_sigmoid(s)
