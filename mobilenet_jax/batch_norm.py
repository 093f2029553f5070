"""BatchNorm over NHWC with a hand-written backward pass.

Ioffe & Szegedy 2015, "Batch Normalization", Algorithm 1 (forward) and the
chain rule of its section 3 (backward). The module is a drop-in for
`flax.linen.BatchNorm` over the channel axis: the same variable names
(params 'scale'/'bias', batch_stats 'mean'/'var'), the same running-average
update (momentum * old + (1 - momentum) * batch), statistics in float32 with
var = E[x^2] - E[x]^2 clipped at 0, output in `dtype`.

Why not flax's: autodiff of its forward pass differentiates through the
float32 casts, the broadcasted mean and the E[x^2] - E[x]^2 variance term by
term. The closed-form gradient below needs two per-channel sums (of dy and of
dy * (x - mean)) and one elementwise pass. On this project's 2-core CPU the
V2 224/32 train step ran 5-10% faster and compiled 1-2 s sooner with it
(interleaved A/B runs; README, "Speed").
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
  """
  del epsilon  # Folded into inv_std by the forward pass.
  x, mean, inv_std, scale = residuals
  dy, dmean, dvar = cotangents
  n = x.size // x.shape[-1]
  xc = x.astype(jnp.float32) - mean
  dy = dy.astype(jnp.float32)
  sum_dy = jnp.sum(dy, _REDUCE)
  sum_dy_xc = jnp.sum(dy * xc, _REDUCE)
  k = scale * inv_std
  dx = (k * dy - k * sum_dy / n
        - xc * (k * inv_std * inv_std * sum_dy_xc / n)
        + dmean / n + xc * (2 * dvar / n))
  return dx.astype(x.dtype), sum_dy_xc * inv_std, sum_dy


normalize_batch.defvjp(_normalize_batch_forward, _normalize_batch_backward)


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
  def __call__(self, x):
    if x.ndim != 4:
      raise ValueError(f'BatchNorm input must be NHWC (4 axes), got shape '
                       f'{x.shape}')
    channels = (x.shape[-1],)
    scale = self.param('scale', nn.initializers.ones, channels, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, channels, jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, channels,
                                 jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, channels,
                                jnp.float32)
    x = x.astype(self.dtype)
    if self.use_running_average:
      y = x - running_mean.value
      y = y * (lax.rsqrt(running_var.value + self.epsilon) * scale) + bias
      return y.astype(self.dtype)
    y, mean, var = normalize_batch(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      running_mean.value = (self.momentum * running_mean.value
                            + (1 - self.momentum) * mean)
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * var)
    return y
