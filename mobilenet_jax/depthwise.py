"""Depthwise convolution implementations, selected by name.

All take NHWC `x` and a (k, k, 1, C) kernel and compute the same 'SAME'-padded
(TensorFlow convention) depthwise convolution:

  y[n, i, j, c] = sum_{a, b} xpad[n, s*i + a, s*j + b, c] * w[a, b, 0, c]

- `grouped`: `lax.conv_general_dilated` with `feature_group_count = C`; the
  reference, and native on TPU.
- `shifted`: k*k strided slices multiplied and added; XLA fuses them into one
  loop, several times faster than its grouped convolution on CPU. Gradients
  by autodiff.
- `shifted_vjp`: `shifted` with a hand-written backward pass that keeps the
  padded input (`_valid_shifted_vjp`). dL/dx is the autodiff of the shifted
  form (padded cotangent, shifted adds: one fused loop); dL/dw, k*k
  reductions over batch and space, is where autodiff is slow on CPU (XLA
  copies every tap's window out before reducing it), so it is accumulated
  one example at a time, whose windows stay in cache, its k*k sums over
  each output row in one reduction fused with the products
  (`_kernel_grad`). Summed tap by tap over the whole example instead, each
  window was copied out first: the V2 224/32 train step ran ~10% slower
  (interleaved A/B, 2026-12-03) and compiled ~3 s later.
- `auto`: `AUTO[jax.default_backend()]`, resolved by `resolve` at trace
  time: grouped on TPU (native there), shifted_vjp on CPU (measured below),
  shifted on GPU (not measured; see the end).

Measured on this 2-core CPU (Xeon, AVX-512; jax 0.10.2; 2026-12-03, a
quiet VM): MobileNetV2 1.0, 224 px, batch 32, float32, the default train
step (`bench`), steps alternating between implementations in one process
(5 train and 10 inference steps each); "x" is the median of the paired
step-time ratios to shifted_vjp.

  | impl        | inference img/s | train img/s | train step | compile (s) |
  |-------------|-----------------|-------------|------------|-------------|
  | grouped     | 9.2             | 2.2         | 14.2x      | 10.0        |
  | shifted     | 121.7           | 21.2        | 1.36x      | 10.9        |
  | shifted_vjp | 119.8           | 29.2        | 1.00       | 12.4        |

Inference with grouped took 12.9x shifted_vjp's time; shifted and
shifted_vjp share the forward pass (paired 1.01x).

A space-to-depth form (stride-2 taps as unit-stride slices of the input's
2x2 phases) was measured too and dropped: no faster forward, slower backward.
On GPU `auto` picks `shifted` without a measurement here: XLA fuses its
slices into one elementwise kernel and its reductions into reduction kernels,
while grouped convolutions are slow there as well, especially backward
(jax-ml/jax #13800, #23713), and a per-example loop would serialise the GPU.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """TensorFlow 'SAME' padding (before, after): the extra pixel goes after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


def _grouped(x, kernel, strides):
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


def pad_same(x, k, s):
  """NHWC `x` zero-padded for a k x k, stride-s 'SAME' convolution."""
  _, h, w, _ = x.shape
  return jnp.pad(x, [(0, 0), same_padding(h, k, s), same_padding(w, k, s),
                     (0, 0)])


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


def windows(x, k, s):
  """`valid_windows` of `x` padded for 'SAME': the output has
  ceil(size / s) rows and columns."""
  return valid_windows(pad_same(x, k, s), k, s)


def _valid_shifted(xp, kernel, strides):
  """The 'VALID' depthwise convolution of the padded `xp`: its taps'
  windows multiplied by the kernel's taps and added."""
  y = None
  for (a, b), window in valid_windows(xp, kernel.shape[0], strides):
    term = window * kernel[a, b, 0]
    y = term if y is None else y + term
  return y


def _shifted(x, kernel, strides):
  return _valid_shifted(pad_same(x, kernel.shape[0], strides), kernel,
                        strides)


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


def _shifted_vjp(x, kernel, strides):
  return _valid_shifted_vjp(pad_same(x, kernel.shape[0], strides), kernel,
                            strides)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _valid_shifted_vjp(xp, kernel, strides):
  """The 'VALID' shifted form on the padded input, so that the padded input
  is what the backward pass keeps: the forward pass writes it anyway (fused
  with the activation before it), and keeping the unpadded input made XLA
  write that one out too (the V2 224/32 train step's median: 1080 -> 1024
  ms, interleaved A/B, 2026-12-03)."""
  return _valid_shifted(xp, kernel, strides)


def _valid_shifted_vjp_fwd(xp, kernel, strides):
  return _valid_shifted(xp, kernel, strides), (xp, kernel)


def _valid_shifted_vjp_bwd(strides, residuals, g):
  xp, kernel = residuals
  _, xp_vjp = jax.vjp(lambda xp: _valid_shifted(xp, kernel, strides), xp)
  dw = _kernel_grad(xp, g, kernel.shape[0], strides)
  return xp_vjp(g)[0], dw.astype(kernel.dtype)


_valid_shifted_vjp.defvjp(_valid_shifted_vjp_fwd, _valid_shifted_vjp_bwd)

# The choice of `auto` per backend (see the module docstring); a backend not
# listed gets the reference.
AUTO = {'tpu': 'grouped', 'cpu': 'shifted_vjp', 'gpu': 'shifted'}


def resolve(impl: str, backend: str | None = None) -> str:
  """The implementation `impl` names: 'auto' becomes `AUTO[backend]`
  (`backend` defaults to `jax.default_backend()`); other names pass through."""
  if impl != 'auto':
    return impl
  return AUTO.get(backend or jax.default_backend(), 'grouped')


def _auto(x, kernel, strides):
  return IMPLEMENTATIONS[resolve('auto')](x, kernel, strides)


IMPLEMENTATIONS = {'grouped': _grouped, 'shifted': _shifted,
                   'shifted_vjp': _shifted_vjp, 'auto': _auto}


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: int = 1,
                   impl: str = 'grouped') -> jax.Array:
  """Depthwise 'SAME' convolution of NHWC `x` with a (k, k, 1, C) kernel."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f'depthwise_impl must be one of '
                     f'{sorted(IMPLEMENTATIONS)}, got {impl!r}')
  return IMPLEMENTATIONS[impl](x, kernel, strides)
