"""One MobileNet builder: architecture table + alpha + expansion -> Flax module.

`plan_layers` walks a table from `specs.py` once, applying the width
multiplier alpha and the expansion factor t with the family's rounding, and
yields concrete layers; `MobileNet` instantiates them. Every registry name is
a table (or a transformation of one), not a subclass.
"""

import dataclasses
import numbers
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax import config_check
from mobilenet_jax import ops as ops_lib
from mobilenet_jax import specs
from mobilenet_jax.blocks import (DepthwiseSeparable, FusedInvertedBottleneck,
                                  InvertedResidual,
                                  UniversalInvertedBottleneck)
from mobilenet_jax.layers import (ACTIVATIONS, low_precision_kwargs,
                                  make_divisible)

MIN_RESOLUTION = config_check.MIN_RESOLUTION
FEATURE_STRIDES = (4, 8, 16, 32)

REGISTRY: dict[str, specs.Architecture] = specs.ARCHITECTURES

# The block module of each `LayerPlan.kind` but 'conv' (an op set's conv_bn).
BLOCKS = {
    'separable': DepthwiseSeparable,
    'inverted_residual': InvertedResidual,
    'uib': UniversalInvertedBottleneck,
    'fused_ib': FusedInvertedBottleneck,
}


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """One concrete layer: `kind` is 'conv' or a key of `BLOCKS`, `args` the
  module's keyword arguments, `stride` its own stride."""
  name: str
  kind: str
  args: tuple  # sorted (key, value) pairs, so that plans are hashable
  stride: int


def scale_width(channels: int, alpha: float, rounding: str) -> int:
  """The width multiplier: int(alpha * c) for V1, make_divisible for V2-V4."""
  if rounding == 'int':
    return int(channels * alpha)
  return make_divisible(channels * alpha)


def check_alpha_expansion(arch: specs.Architecture, name: str, alpha: float,
                          expansion: float | None) -> None:
  del arch  # config_check looks it up by name
  config_check.check_alpha_expansion(name, alpha, expansion)


def plan_layers(arch: specs.Architecture, alpha: float = 1.0,
                expansion: float | None = None, in_channels: int = 3):
  """Resolves a table into concrete layers (names, widths, strides).

  expansion (t): V2 uses it in place of the paper's t = 6 (every bottleneck
  after the first); V3 and V4 multiply every expansion size by it. V3 and V4
  expansion sizes are taken relative to the block's input width, as in the
  authors' code, so that alpha shrinks them consistently: V4's expanded
  width is make_divisible(input width * ratio * t), timm's and TF Model
  Garden's rounding at t = 1.
  """
  layers = []
  paper_width, width = in_channels, in_channels

  def add(kind, stride, **args):
    layers.append(LayerPlan(
        'stem' if not layers else f'block_{len(layers)}', kind,
        tuple(sorted(args.items())), stride))

  for row in arch.rows:
    if isinstance(row, specs.Conv):
      if row.width == 'fixed' or (row.width == 'not_shrunk' and alpha <= 1):
        out = row.out
      elif row.width == 'relative':
        out = make_divisible(width * row.out / paper_width)
      else:
        out = scale_width(row.out, alpha, arch.rounding)
      add('conv', row.stride, features=out, kernel_size=row.kernel,
          strides=row.stride, activation=row.activation)
    elif isinstance(row, specs.Separable):
      out = scale_width(row.out, alpha, arch.rounding)
      for i in range(row.repeat):
        stride = row.stride if i == 0 else 1
        add('separable', stride, features=out, strides=stride)
        width = out
    elif isinstance(row, specs.Bottleneck):
      t = row.t if (expansion is None or row.t == 1) else expansion
      out = scale_width(row.out, alpha, arch.rounding)
      for i in range(row.repeat):
        stride = row.stride if i == 0 else 1
        add('inverted_residual', stride, expanded=make_divisible(width * t),
            features=out, kernel_size=3, strides=stride, activation='relu6')
        width = out
    elif isinstance(row, specs.Bneck):
      out = scale_width(row.out, alpha, arch.rounding)
      expanded = make_divisible(
          width * row.exp / paper_width * (expansion or 1.0))
      add('inverted_residual', row.stride, expanded=expanded, features=out,
          kernel_size=row.kernel, strides=row.stride,
          activation=row.activation,
          se_features=make_divisible(expanded / 4) if row.se else None)
    elif isinstance(row, (specs.FusedIB, specs.UIB)):
      out = scale_width(row.out, alpha, arch.rounding)
      expanded = make_divisible(width * row.exp * (expansion or 1.0))
      block = dict(expanded=expanded, features=out, strides=row.stride,
                   activation=specs.V4_ACTIVATION)
      if isinstance(row, specs.FusedIB):
        add('fused_ib', row.stride, kernel_size=row.kernel, **block)
      else:
        add('uib', row.stride, start_kernel_size=row.start,
            middle_kernel_size=row.middle, **block)
    else:
      raise TypeError(f'unknown architecture row {row!r}')
    paper_width, width = row.out, out
  return tuple(layers)


class MobileNet(nn.Module):
  """A MobileNet from a layer plan (see `create_model`).

  Returns logits (float32), or with `include_top=False` the pooled features,
  or with `features_only=True` a dict {stride: feature map} for strides 4, 8,
  16 and 32 (the last map at each stride; a detection/segmentation backbone).
  `ops` names the op set that computes the layers (`mobilenet_jax.ops`).
  """
  plan: tuple
  head: specs.Head
  alpha: float = 1.0
  num_classes: int = 1000
  dropout_rate: float = 0.2
  include_top: bool = True
  features_only: bool = False
  ops: str = 'reference'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32
  float32_weight_grads: bool = True

  @nn.compact
  def __call__(self, images, train: bool = False):
    if images.ndim != 4:
      raise ValueError(f'images must be NHWC (4-D), got shape {images.shape}')
    if min(images.shape[1:3]) < MIN_RESOLUTION:
      raise config_check.ConfigError(
          f'resolution must be >= {MIN_RESOLUTION}, got '
          f'{images.shape[1]}x{images.shape[2]}')
    op_set = ops_lib.get(self.ops)
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
              dtype=self.dtype, float32_weight_grads=self.float32_weight_grads)
    x = images.astype(self.dtype)
    # Float32 kernel and bias gradients under a lower-precision dtype.
    dense = low_precision_kwargs(self.dtype, dense=True,
                                 float32_weight_grads=self.float32_weight_grads)
    stride, features = 1, {}
    for layer in self.plan:
      args = dict(layer.args)
      if layer.kind == 'conv':
        x = op_set.conv_bn(name=layer.name, **args, **bn)(x, train)
      else:
        x = BLOCKS[layer.kind](ops=op_set, name=layer.name, **args, **bn)(
            x, train)
      stride *= layer.stride
      if stride in FEATURE_STRIDES:
        features[stride] = x
    if self.features_only:
      return features
    x = jnp.mean(x, axis=(1, 2))
    if not self.include_top:
      return x.astype(jnp.float32)
    if self.head.features:
      width = self.head.features
      if self.alpha > 1:
        width = make_divisible(width * self.alpha)
      if self.head.batch_norm:
        x = op_set.conv_bn(width, 1, 1, self.head.activation, name='head',
                           **bn)(x[:, None, None, :], train)[:, 0, 0]
      else:
        x = nn.Dense(width, dtype=self.dtype, name='head',
                     **dense)(x).astype(self.dtype)
        x = ACTIVATIONS[self.head.activation](x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='classifier',
                 **dense)(x)
    return x.astype(jnp.float32)


def create_model(name: str, *, num_classes: int = 1000, alpha: float = 1.0,
                 expansion: float | None = None, dropout_rate: float = 0.2,
                 dtype: Any = jnp.float32, bn_momentum: float | None = None,
                 bn_epsilon: float = 1e-3, include_top: bool = True,
                 features_only: bool = False, ops: str = 'auto',
                 float32_weight_grads: bool = True) -> MobileNet:
  """Builds a registry model, Keras-Applications style: every knob a keyword.

  Args:
    name: one of `REGISTRY`.
    num_classes: classifier width.
    alpha: width multiplier (> 0); see docs/design.md for each family's rounding.
    expansion: the expansion factor t (V2: replaces t = 6; V3, V4: scale every
      expansion size); None keeps the paper's. V1 has none.
    dropout_rate: dropout before the classifier.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters, BatchNorm
      statistics and logits stay float32.
    bn_momentum: BatchNorm decay; None takes the family's reference value
      (V1 0.99, V2/V3 0.999, V4 0.99).
    bn_epsilon: BatchNorm epsilon.
    include_top: False returns pooled features instead of logits.
    features_only: return {stride: feature map} for strides 4, 8, 16, 32.
    ops: the op set that computes the layers: 'reference' (plain Flax),
      'cpu' (XLA:CPU kernels, the same variables and values) or 'auto'
      (resolved here: 'cpu' on the CPU backend, else 'reference'); see
      `mobilenet_jax.ops`.
    float32_weight_grads: under a lower-precision dtype, compute kernel and
      bias gradients in float32 (`layers.float32_weight_grad`, a custom
      transpose); False: plain Flax layers (autodiff's gradients in `dtype`).
  """
  if name not in REGISTRY:
    raise config_check.ConfigError(
        f'model name must be one of {sorted(REGISTRY)}, got {name!r}')
  arch = REGISTRY[name]
  check_alpha_expansion(arch, name, alpha, expansion)
  # Any integer type (a count read with numpy, say), but not a bool.
  if (isinstance(num_classes, bool)
      or not isinstance(num_classes, numbers.Integral) or num_classes <= 0):
    raise config_check.ConfigError(
        f'num_classes must be a positive int, got {num_classes!r}')
  num_classes = int(num_classes)
  if not 0 <= dropout_rate < 1:
    raise config_check.ConfigError(
        f'dropout_rate must be in [0, 1), got {dropout_rate!r}')
  ops = ops_lib.resolve(ops)
  try:
    compute_dtype = jnp.dtype(dtype)
  except TypeError:  # not a dtype at all, e.g. 'bf16'
    compute_dtype = None
  if compute_dtype not in [jnp.dtype(d) for d in config_check.DTYPES]:
    raise config_check.ConfigError(
        f'dtype must be one of {list(config_check.DTYPES)}, got {dtype!r}')
  return MobileNet(
      plan=plan_layers(arch, alpha, expansion), head=arch.head, alpha=alpha,
      num_classes=num_classes, dropout_rate=dropout_rate,
      include_top=include_top, features_only=features_only,
      ops=ops,
      bn_momentum=arch.bn_momentum if bn_momentum is None else bn_momentum,
      bn_epsilon=bn_epsilon, dtype=compute_dtype,
      float32_weight_grads=float32_weight_grads)


def input_resolution(rho: float = 1.0, base_resolution: int = 224) -> int:
  """The resolution multiplier: input side = round(rho * base_resolution)."""
  if not rho > 0:
    raise config_check.ConfigError(f'rho must be > 0, got {rho!r}')
  resolution = round(rho * base_resolution)
  if resolution < MIN_RESOLUTION:
    raise config_check.ConfigError(
        f'resolution must be >= {MIN_RESOLUTION}, got '
        f'{resolution} (rho={rho}, base_resolution='
        f'{base_resolution})')
  return resolution
