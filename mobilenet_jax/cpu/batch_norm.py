"""BatchNorm over NHWC with a hand-written backward pass (the `cpu` op set).

Ioffe & Szegedy 2015, "Batch Normalization", Algorithm 1 (forward) and the
chain rule of its section 3 (backward). The module is a drop-in for
`flax.linen.BatchNorm` over the channel axis: the same variable names
(params 'scale'/'bias', batch_stats 'mean'/'var'), the same running-average
update (momentum * old + (1 - momentum) * batch), statistics in float32 with
var = E[x^2] - E[x]^2 clipped at 0, output in `dtype`.

Why not flax's on CPU: autodiff of its forward pass differentiates through
the float32 casts, the broadcasted mean and the E[x^2] - E[x]^2 variance
term by term. The closed-form gradient below needs two per-channel sums (of
dy and of dy * x) and one elementwise pass. `normalize_pointwise_batch`
goes further for a 1x1 expansion: it folds the convolution into the
normalisation (docs/performance.md has the measurements).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_REDUCE = (0, 1, 2)  # N, H, W: one statistic per channel.


def _batch_statistics(x):
  """Per-channel mean and biased variance, float32 (Algorithm 1, lines 1-2)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, _REDUCE)
  var = jnp.maximum(0.0, jnp.mean(x * x, _REDUCE) - mean * mean)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_batch(x, scale, bias, epsilon):
  """(x - mean) / sqrt(var + epsilon) * scale + bias with the batch's mean, var.

  Returns (y, mean, var): y in x's dtype, the statistics in float32 for the
  running averages. Differentiable in x, scale and bias, also through mean
  and var.
  """
  return _normalize_batch_forward(x, scale, bias, epsilon)[0]


def _normalize_batch_forward(x, scale, bias, epsilon):
  mean, var = _batch_statistics(x)
  inv_std = lax.rsqrt(var + epsilon)
  y = (x.astype(jnp.float32) - mean) * (inv_std * scale) + bias
  return (y.astype(x.dtype), mean, var), (x, mean, inv_std, scale)


def _normalize_batch_backward(epsilon, residuals, cotangents):
  """The gradient of Algorithm 1 in closed form.

  With xc = x - mean, r = 1 / sqrt(var + eps), k = scale * r and n values per
  channel:
    d scale = sum(dy * xc) * r,   d bias = sum(dy),
    dx = k * dy - k * sum(dy) / n - xc * k * r^2 * sum(dy * xc) / n
         + d mean / n + 2 * xc * d var / n.
  The last two terms carry the cotangents of the returned statistics (zero
  when only y reaches the loss).

  sum(dy * xc) is taken as sum(dy * x) - mean * sum(dy), as the forward
  pass takes E[x^2] - E[x]^2: summed as written, XLA:CPU wrote xc out in
  full for the library reduction (which fuses no subtraction) and read it
  back, one more pass over every BatchNorm input.
  """
  del epsilon  # Folded into inv_std by the forward pass.
  x, mean, inv_std, scale = residuals
  dy, dmean, dvar = cotangents
  n = x.size // x.shape[-1]
  x32 = x.astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  sum_dy = jnp.sum(dy, _REDUCE)
  sum_dy_xc = jnp.sum(dy * x32, _REDUCE) - mean * sum_dy
  xc = x32 - mean
  k = scale * inv_std
  dx = (k * dy - k * sum_dy / n
        - xc * (k * inv_std * inv_std * sum_dy_xc / n)
        + dmean / n + xc * (2 * dvar / n))
  return dx.astype(x.dtype), sum_dy_xc * inv_std, sum_dy


normalize_batch.defvjp(_normalize_batch_forward, _normalize_batch_backward)


def _dot(a, b, contracting):
  return lax.dot_general(a, b, (contracting, ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def normalize_pointwise_batch(x, kernel, scale, bias, epsilon):
  """`normalize_batch(x @ kernel, scale, bias, epsilon)` for the 1x1
  convolution of NHWC `x` with a (K, C) `kernel`, without forming x @ kernel.

  With xc = x - mean(x) (per input channel), y - mean(y) = xc @ kernel
  exactly, so the batch's statistics come from the small K x K matrix
  xc^T xc: mean(y) = mean(x) @ kernel, var(y) = diag(kernel^T xc^T xc
  kernel) / n; and the output is one dot, xc @ (kernel * k) + bias with
  k = scale / sqrt(var + eps). The backward pass (`_normalize_pointwise_
  backward`) needs the dots xc^T dz and dz (kernel * k)^T and the sum of dz,
  where the separate layers make three passes over y and two over dz, and
  write y, y - mean(y) and dy out. For an expansion (C >= 2K) that is most
  of the memory traffic of the layer pair; xc^T xc costs K/C of the
  convolution's multiply-adds.

  xc is kept with a column of ones appended, xc1 = [xc, 1], so that the
  bias is the last row of the forward dot's right operand and xc1^T dz
  gives sum(dz) as its last row: one pass over dz instead of a dot and a
  reduction.

  Returns (z, mean, var) as `normalize_batch` does, z in float32.
  """
  return _normalize_pointwise_forward(x, kernel, scale, bias, epsilon)[0]


def _normalize_pointwise_forward(x, kernel, scale, bias, epsilon):
  positions = x.reshape(-1, x.shape[-1])
  n, channels = positions.shape
  mean_x = jnp.mean(positions, 0)
  xc1 = jnp.concatenate([positions - mean_x, jnp.ones((n, 1), x.dtype)], 1)
  gram = _dot(xc1, xc1, ((0,), (0,)))[:channels, :channels]
  mean = mean_x @ kernel
  var = jnp.einsum('kc,kl,lc->c', kernel, gram, kernel) / n
  inv_std = lax.rsqrt(var + epsilon)
  k = scale * inv_std
  z = _dot(xc1, jnp.concatenate([kernel * k, bias[None]]), ((1,), (0,)))
  return ((z.reshape(*x.shape[:-1], -1), mean, var),
          (xc1, kernel, gram, mean_x, inv_std, k))


def _normalize_pointwise_backward(epsilon, residuals, cotangents):
  """`_normalize_batch_backward`'s gradient with y = x @ kernel folded in.

  With yc = y - mean(y) = xc @ kernel, that gradient is dy = k * dz +
  yc * v + u per channel, v = 2 dvar / n - k r^2 sum(dz * yc) / n and
  u = dmean / n - k sum(dz) / n, where sum(dz * yc) = colsum(kernel *
  xc^T dz). Then
    dx = dz (kernel * k)^T + xc1 [kernel diag(v) kernel^T; u kernel^T],
    d kernel = x^T dy = (xc^T dz) * k + (xc^T xc kernel) * v
               + mean(x) dmean^T,
  the mean(x) sum(dz) terms of x^T (k * dz) and n mean(x) u^T cancelling.
  """
  del epsilon  # Folded into inv_std by the forward pass.
  xc1, kernel, gram, mean_x, inv_std, k = residuals
  dz, dmean, dvar = cotangents
  dz_positions = dz.reshape(-1, dz.shape[-1])
  n, channels = xc1.shape[0], kernel.shape[0]
  xc1_dz = _dot(xc1, dz_positions, ((0,), (0,)))
  xc_dz, sum_dz = xc1_dz[:channels], xc1_dz[channels]
  sum_dz_yc = jnp.sum(kernel * xc_dz, 0)
  v = 2 * dvar / n - k * inv_std * inv_std * sum_dz_yc / n
  u = dmean / n - k * sum_dz / n
  xc1_terms = jnp.concatenate([(kernel * v) @ kernel.T, (u @ kernel.T)[None]])
  dx = _dot(dz_positions, kernel * k, ((1,), (1,))) + xc1 @ xc1_terms
  dkernel = xc_dz * k + (gram @ kernel) * v + jnp.outer(mean_x, dmean)
  return (dx.reshape(*dz.shape[:-1], -1), dkernel, sum_dz_yc * inv_std,
          sum_dz)


normalize_pointwise_batch.defvjp(_normalize_pointwise_forward,
                                 _normalize_pointwise_backward)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis of an NHWC tensor; see the module docstring.

  In training mode (`use_running_average=False`) it normalises with the
  batch's statistics and updates the running averages (not while
  initialising, as flax); otherwise it normalises with the running averages.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pointwise_kernel=None):
    """Normalises NHWC `x`; with a (K, C) `pointwise_kernel`, `x` is a 1x1
    convolution's input and the layer normalises x @ pointwise_kernel
    (in training through `normalize_pointwise_batch`; float32 only)."""
    if x.ndim != 4:
      raise ValueError(f'BatchNorm input must be NHWC (4 axes), got shape '
                       f'{x.shape}')
    channels = (x.shape[-1] if pointwise_kernel is None
                else pointwise_kernel.shape[-1],)
    scale = self.param('scale', nn.initializers.ones, channels, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, channels, jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, channels,
                                 jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, channels,
                                jnp.float32)
    x = x.astype(self.dtype)
    if pointwise_kernel is not None and self.use_running_average:
      x = _dot(x, pointwise_kernel.astype(self.dtype), ((3,), (0,)))
      pointwise_kernel = None
    if self.use_running_average:
      y = x - running_mean.value
      y = y * (lax.rsqrt(running_var.value + self.epsilon) * scale) + bias
      return y.astype(self.dtype)
    if pointwise_kernel is None:
      y, mean, var = normalize_batch(x, scale, bias, self.epsilon)
    elif self.dtype != jnp.float32:
      raise ValueError('BatchNorm with pointwise_kernel trains in float32 '
                       f'only, got dtype {jnp.dtype(self.dtype).name}')
    else:
      y, mean, var = normalize_pointwise_batch(x, pointwise_kernel, scale,
                                               bias, self.epsilon)
    if not self.is_initializing():
      running_mean.value = (self.momentum * running_mean.value
                            + (1 - self.momentum) * mean)
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * var)
    return y
