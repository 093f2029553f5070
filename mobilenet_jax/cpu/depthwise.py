"""The depthwise convolution of the `cpu` op set: shifted slices, with a
hand-written backward pass.

It computes the padded ('same': TensorFlow's 'SAME'; 'symmetric': PyTorch's
k // 2 on both sides, `layers.conv_padding`) depthwise convolution of NHWC
`x` with a (k, k, 1, C) kernel, as the `reference` op set's
`nn.Conv(feature_group_count=C)` does:

  y[n, i, j, c] = sum_{a, b} xpad[n, s*i + a, s*j + b, c] * w[a, b, 0, c]

as k*k strided slices of the padded input (`valid_windows`), multiplied by
the kernel's taps and added, which XLA:CPU fuses into one loop; its grouped
convolution is several times slower on CPU (docs/performance.md).

The backward pass (`_valid_shifted_vjp`) keeps the padded input, which the
forward pass writes anyway. dL/dx is the autodiff of the shifted form
(padded cotangent, shifted adds: one fused loop). dL/dw, k*k reductions over
batch and space, is where autodiff is slow on CPU (XLA copies every tap's
window out before reducing it), so `_kernel_grad` accumulates it one example
at a time, whose windows stay in cache, summing its k*k products over each
output row in one reduction fused with the products.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax import config_check


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """TensorFlow 'SAME' padding (before, after): the extra pixel goes after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


def pad(x, k, s, padding='same'):
  """NHWC `x` zero-padded for a k x k, stride-s convolution: 'same' as
  TensorFlow's 'SAME', 'symmetric' k // 2 on both sides (PyTorch's)."""
  config_check.one_of('padding', padding, config_check.PADDINGS)
  _, h, w, _ = x.shape
  if padding == 'symmetric':
    rows = cols = (k // 2, k // 2)
  else:
    rows, cols = same_padding(h, k, s), same_padding(w, k, s)
  return jnp.pad(x, [(0, 0), rows, cols, (0, 0)])


def valid_windows(xp, k, s):
  """Yields ((a, b), window) for every tap of a 'VALID' k x k, stride-s
  convolution of NHWC `xp`: the strided slice that tap (a, b) multiplies,
  shaped like the output."""
  n, h, w, c = xp.shape
  out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
  for a in range(k):
    for b in range(k):
      yield (a, b), lax.slice(
          xp, (0, a, b, 0),
          (n, a + (out_h - 1) * s + 1, b + (out_w - 1) * s + 1, c),
          (1, s, s, 1))


def windows(x, k, s, padding='same'):
  """`valid_windows` of `x` padded by `pad`: for odd k the output has
  ceil(size / s) rows and columns with either padding."""
  return valid_windows(pad(x, k, s, padding), k, s)


def _valid_shifted(xp, kernel, strides):
  """The 'VALID' depthwise convolution of the padded `xp`: its taps'
  windows multiplied by the kernel's taps and added."""
  y = None
  for (a, b), window in valid_windows(xp, kernel.shape[0], strides):
    term = window * kernel[a, b, 0]
    y = term if y is None else y + term
  return y


def _sum_each(terms, axes):
  """The sum of each of `terms` over `axes`, as one variadic reduction: XLA
  fuses it with the terms' producers, so they are computed and summed in one
  pass over their inputs."""
  zeros = [jnp.zeros((), t.dtype) for t in terms]
  return lax.reduce(terms, zeros,
                    lambda a, b: [u + v for u, v in zip(a, b)], axes)


def _kernel_grad(xp, g, k, s):
  """dL/dw[a, b, 0, c] = sum_{n, i, j} window_ab[n, i, j, c] * g[n, i, j, c]
  for the 'VALID' windows of the padded input `xp`, in float32 or wider.

  Accumulated one example at a time (its windows stay in cache), as k*k
  sums over j only, one variadic reduction that XLA fuses with the
  products; the sums over output rows i and over the batch are elementwise
  adds into a (k*k, rows, C) carry, summed over rows once at the end. XLA
  emits such a reduction as a scalar loop over each kept (i, c) with j
  inside, so every pass stays within three input rows; summing over (i, j)
  at once made each channel's pass stride through the whole example.
  """
  acc_dtype = jnp.promote_types(xp.dtype, jnp.float32)

  def add_example(n, dw):
    xn = lax.dynamic_index_in_dim(xp, n)
    gn = lax.dynamic_index_in_dim(g, n)
    products = [(window * gn).astype(acc_dtype)
                for _, window in valid_windows(xn, k, s)]
    return dw + jnp.stack(_sum_each(products, (0, 2)))

  dw = lax.fori_loop(0, xp.shape[0], add_example,
                     jnp.zeros((k * k, g.shape[1], xp.shape[3]), acc_dtype))
  return dw.sum(1).reshape(k, k, 1, xp.shape[3])


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: int = 1,
                   padding: str = 'same') -> jax.Array:
  """Depthwise convolution of NHWC `x` with a (k, k, 1, C) kernel, padded by
  `pad`: the shifted form, with the backward pass of `_valid_shifted_vjp`."""
  return _valid_shifted_vjp(pad(x, kernel.shape[0], strides, padding),
                            kernel, strides)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _valid_shifted_vjp(xp, kernel, strides):
  """The 'VALID' shifted form on the padded input, so that the padded input
  is what the backward pass keeps: the forward pass writes it anyway (fused
  with the activation before it); keeping the unpadded input made XLA write
  that one out too."""
  return _valid_shifted(xp, kernel, strides)


def _valid_shifted_vjp_fwd(xp, kernel, strides):
  return _valid_shifted(xp, kernel, strides), (xp, kernel)


def _valid_shifted_vjp_bwd(strides, residuals, g):
  xp, kernel = residuals
  _, xp_vjp = jax.vjp(lambda xp: _valid_shifted(xp, kernel, strides), xp)
  dw = _kernel_grad(xp, g, kernel.shape[0], strides)
  return xp_vjp(g)[0], dw.astype(kernel.dtype)


_valid_shifted_vjp.defvjp(_valid_shifted_vjp_fwd, _valid_shifted_vjp_bwd)

