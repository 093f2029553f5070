"""Parameters, BatchNorm statistics and multiply-adds (MACs), per layer.

`profile_model` runs `model.init` under `jax.eval_shape` (shapes only, nothing
is compiled or computed, so full-size models at 224 cost about a second) and
intercepts every `nn.Conv` and `nn.Dense` call to record its input and output
shapes (a MobileNet is profiled with the `reference` op set, whose layers
are these; the `cpu` set has the same variables and arithmetic). MACs follow
the V1 paper's cost model (section 3.1, equations 1-5): a k x k convolution with `groups` groups costs
out_h * out_w * out_c * k * k * in_c / groups, a dense layer in * out. Only
convolutions and dense layers count (squeeze-and-excite's two 1x1 convs
included); biases, BatchNorm, activations, pooling, the SE gate's rescale and
residual additions do not, as in the papers' tables. With that convention
V1 and V2 match their tables to 0.3%; V3-Large comes to 216.6M, TF-slim's 217M
for the released model (the V3 paper's table 3 prints 219M).

`separable_vs_standard` is the V1 paper's section 3.1 comparison for one
layer; `Profile.standard_macs` applies it to a whole network.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mobilenet_jax import config_check
from mobilenet_jax import models
from mobilenet_jax.blocks import DepthwiseSeparable, InvertedResidual

PADDINGS = ('SAME', 'VALID')


@dataclasses.dataclass(frozen=True)
class SeparableCost:
  """MACs of one standard k x k convolution and of its depthwise-separable
  replacement (V1 paper, equations 1-5)."""
  standard: int
  depthwise: int
  pointwise: int

  @property
  def separable(self) -> int:
    return self.depthwise + self.pointwise

  @property
  def ratio(self) -> float:
    """separable / standard; equals 1/N + 1/k^2 (V1 paper, equation 5)."""
    return self.separable / self.standard


def separable_vs_standard(height: int, width: int, in_channels: int,
                          out_channels: int, kernel_size: int, stride: int = 1,
                          padding: str = 'SAME') -> SeparableCost:
  """Cost of a k x k conv from M to N channels, standard vs depthwise-separable.

  With D_F x D_F the output map: standard k*k*M*N*D_F^2 (equation 2),
  depthwise k*k*M*D_F^2 (equation 3), pointwise M*N*D_F^2 (equation 4).
  `padding` is 'SAME' (output side ceil(side / stride)) or 'VALID'
  (floor((side - k) / stride) + 1).
  """
  sizes = dict(height=height, width=width, in_channels=in_channels,
               out_channels=out_channels, kernel_size=kernel_size,
               stride=stride)
  for field, value in sizes.items():
    if not (isinstance(value, int) and value > 0):
      raise ValueError(f'{field} must be a positive int, got {value!r}')
  if padding not in PADDINGS:
    raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')
  if padding == 'VALID' and kernel_size > min(height, width):
    raise ValueError(f'kernel_size must be <= height and width with VALID '
                     f'padding, got {kernel_size} for {height}x{width}')
  if padding == 'SAME':
    out_h, out_w = -(-height // stride), -(-width // stride)
  else:
    out_h = (height - kernel_size) // stride + 1
    out_w = (width - kernel_size) // stride + 1
  positions = out_h * out_w
  k2 = kernel_size * kernel_size
  return SeparableCost(
      standard=positions * k2 * in_channels * out_channels,
      depthwise=positions * k2 * in_channels,
      pointwise=positions * in_channels * out_channels)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One convolution or dense layer of a model.

  name: module path, e.g. 'block_3/depthwise/conv'.
  kind: 'conv', 'depthwise' or 'dense'.
  input_shape, output_shape: per example (H, W, C) or (C,).
  kernel_size: (k_h, k_w); (1, 1) for dense layers.
  groups: C for a depthwise conv, else nn.Conv's feature_group_count (1 for
    dense layers).
  params, batch_stats: the layer's variables plus those of the layers without
    MACs called after it (its BatchNorm's scale, bias, mean and variance).
  macs: multiply-adds per example.
  standard_macs: what this layer costs in the network with every depthwise +
    pointwise (V1) or depthwise + projection (V2/V3) pair replaced by one
    standard convolution: the depthwise row carries that convolution, its
    partner 0, every other layer its own `macs` (V4's UIB and FusedIB blocks
    included: the comparison is V1-V3's).
  """
  name: str
  kind: str
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  kernel_size: tuple[int, int]
  groups: int
  params: int
  batch_stats: int
  macs: int
  standard_macs: int


@dataclasses.dataclass(frozen=True)
class Profile:
  """Per-layer costs of a model at one input resolution. `params` and
  `batch_stats` are counted on the whole variables tree."""
  resolution: int
  layers: tuple[Layer, ...]
  params: int
  batch_stats: int

  @property
  def macs(self) -> int:
    return sum(layer.macs for layer in self.layers)

  @property
  def standard_macs(self) -> int:
    return sum(layer.standard_macs for layer in self.layers)


@dataclasses.dataclass(frozen=True)
class _Call:
  """One intercepted module call; shapes (batch dimension dropped) are
  recorded for convolutions and dense layers only."""
  path: tuple[str, ...]
  module: nn.Module
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]
  block: tuple[str, ...] | None  # path of the enclosing MobileNet block


_COMPUTE = (nn.Conv, nn.Dense)
_BLOCKS = (DepthwiseSeparable, InvertedResidual)


def _trace(model: nn.Module, resolution: int):
  """Runs `model.init` shape-only; returns its calls (in order) and variables."""
  calls, blocks = [], []

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(module, _BLOCKS):
      blocks.append(module.path)
    out = next_fun(*args, **kwargs)
    if isinstance(module, _BLOCKS):
      blocks.pop()
    shapes = ((), ())
    if isinstance(module, _COMPUTE):
      shapes = tuple(args[0].shape[1:]), tuple(out.shape[1:])
    calls.append(_Call(module.path, module, *shapes,
                       blocks[-1] if blocks else None))
    return out

  # A fresh function per call, so that no cached trace skips the interceptor.
  def init(rng, images):
    return model.init(rng, images)

  images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(init, jax.random.key(0), images)
  return calls, variables


def _sizes(tree) -> dict[tuple[str, ...], int]:
  """{module path: number of values in the variables it owns directly}."""
  sizes = {}
  for key, leaf in traverse_util.flatten_dict(dict(tree)).items():
    sizes[key[:-1]] = sizes.get(key[:-1], 0) + math.prod(leaf.shape)
  return sizes


def _compute_layer(call: _Call, params: int, batch_stats: int) -> Layer:
  module = call.module
  if isinstance(module, nn.Conv):
    groups = module.feature_group_count
    kind = 'depthwise' if 1 < groups == call.input_shape[-1] else 'conv'
    kernel = tuple(module.kernel_size)
  else:
    kind, kernel, groups = 'dense', (1, 1), 1
  macs = (math.prod(call.output_shape) * kernel[0] * kernel[1]
          * call.input_shape[-1] // groups)
  return Layer('/'.join(call.path), kind, call.input_shape, call.output_shape,
               kernel, groups, params, batch_stats, macs, standard_macs=macs)


def _with_standard_convs(layers: list[Layer],
                         blocks: list[tuple[str, ...] | None]) -> list[Layer]:
  """Fills in `standard_macs`: in each block, the depthwise conv and the
  block's last conv (pointwise / projection, N outputs) become one standard
  k x k conv, which costs N times the depthwise conv (V1 paper, equations 2
  and 3); it is listed on the depthwise row and 0 on the last conv's."""
  layers = list(layers)
  for i, layer in enumerate(layers):
    if layer.kind != 'depthwise' or blocks[i] is None:
      continue
    last = max(j for j, block in enumerate(blocks) if block == blocks[i])
    layers[i] = dataclasses.replace(
        layer, standard_macs=layer.macs * layers[last].output_shape[-1])
    layers[last] = dataclasses.replace(layers[last], standard_macs=0)
  return layers


def profile_model(model: nn.Module, resolution: int = 224) -> Profile:
  """Counts a model's costs, per layer, at a square input `resolution`.

  Args:
    model: a Flax module called as `model(images)` on NHWC images, e.g. from
      `models.create_model`.
    resolution: input side in pixels.

  Returns:
    A `Profile`: one `Layer` per convolution / dense call in call order (each
    with the BatchNorm that follows it), and the totals.
  """
  if not (isinstance(resolution, int) and resolution > 0):
    raise config_check.ConfigError(
        f'resolution must be a positive int, got {resolution!r}')
  if isinstance(model, models.MobileNet):
    model = model.clone(ops='reference')
  calls, variables = _trace(model, resolution)
  params = _sizes(variables.get('params', {}))
  stats = _sizes(variables.get('batch_stats', {}))
  layers, blocks = [], []
  for call in calls:
    p, s = params.get(call.path, 0), stats.get(call.path, 0)
    if isinstance(call.module, _COMPUTE):
      layers.append(_compute_layer(call, p, s))
      blocks.append(call.block)
    elif layers:
      # BatchNorm's variables: counted with the convolution it normalises.
      layers[-1] = dataclasses.replace(
          layers[-1], params=layers[-1].params + p,
          batch_stats=layers[-1].batch_stats + s)
  return Profile(resolution, tuple(_with_standard_convs(layers, blocks)),
                 params=sum(params.values()), batch_stats=sum(stats.values()))


def _shape(shape: tuple[int, ...]) -> str:
  return 'x'.join(str(d) for d in shape)


def format_table(profile: Profile, compare_standard: bool = False) -> str:
  """The per-layer table (layer, output shape, params, MACs) and totals.

  `compare_standard` adds each layer's `standard_macs`: the cost with one
  standard convolution in place of each depthwise-separable pair, listed on
  the pair's depthwise row ('-' on its pointwise / projection row).
  """
  header = ['layer', 'output', 'params', 'MACs']
  if compare_standard:
    header.append('standard MACs')
  rows = []
  for layer in profile.layers:
    row = [layer.name, _shape(layer.output_shape), f'{layer.params:,}',
           f'{layer.macs:,}']
    if compare_standard:
      row.append(f'{layer.standard_macs:,}' if layer.standard_macs else '-')
    rows.append(row)
  totals = ['total', '', f'{profile.params:,}', f'{profile.macs:,}']
  if compare_standard:
    totals.append(f'{profile.standard_macs:,}')
  widths = [max(len(r[c]) for r in [header, totals] + rows)
            for c in range(len(header))]

  def line(row):
    return '  '.join(cell.ljust(w) if c == 0 else cell.rjust(w)
                     for c, (cell, w) in enumerate(zip(row, widths))).rstrip()

  rule = '-' * len(line(header))
  lines = [line(header), rule] + [line(r) for r in rows] + [rule, line(totals)]
  lines.append(f'params {profile.params:,} ({profile.params / 1e6:.2f}M), '
               f'BN statistics {profile.batch_stats:,}, MACs '
               f'{profile.macs:,} ({profile.macs / 1e6:.1f}M) at '
               f'{profile.resolution}x{profile.resolution}')
  if compare_standard:
    lines.append(
        f'with standard convolutions: {profile.standard_macs / 1e6:.1f}M '
        f'MACs; separable / standard = '
        f'{profile.macs / profile.standard_macs:.3f}')
  return '\n'.join(lines)
