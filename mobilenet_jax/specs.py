"""The papers' architecture tables, as data: one row here is one row there.

Widths and expansion sizes are the papers' alpha = 1.0 figures; the builder in
`models.py` applies the width multiplier, expansion factor and rounding.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Conv:
  """A full convolution -> BN -> activation ('conv2d' / 'Conv' rows).

  width: how alpha applies to `out`:
    'scaled'     rounded like every other layer of the family;
    'fixed'      never scaled (V3's 16-channel stem, as in Keras Applications);
    'not_shrunk' scaled only for alpha > 1 (V2's 1280 last conv);
    'relative'   out / (paper input width) times the actual input width, like
                 an expansion size (V3's last 1x1 conv, `6 x input` in Keras).
  """
  kernel: int
  out: int
  stride: int
  activation: str
  width: str = 'scaled'


@dataclasses.dataclass(frozen=True)
class Separable:
  """V1's 'Conv dw / s' + 'Conv / s1 (1x1)' pair of rows, `repeat` times."""
  out: int
  stride: int
  repeat: int = 1


@dataclasses.dataclass(frozen=True)
class Bottleneck:
  """V2 table 2 row (t, c, n, s): `repeat` inverted residuals expanding by t,
  the first with stride s."""
  t: float
  out: int
  repeat: int
  stride: int


@dataclasses.dataclass(frozen=True)
class Bneck:
  """V3 tables 1/2 row: input, operator (kernel), exp size, #out, SE, NL, s."""
  kernel: int
  exp: int
  out: int
  se: bool
  activation: str
  stride: int


@dataclasses.dataclass(frozen=True)
class FusedIB:
  """V4 'FusedIB' row (the paper's appendix tables): a k x k expansion conv
  to `exp` times the input width -> act, then a linear 1x1 projection to
  `out`; no depthwise conv."""
  kernel: int
  exp: float
  out: int
  stride: int


@dataclasses.dataclass(frozen=True)
class UIB:
  """V4 Universal Inverted Bottleneck row (the paper's section 'Universal
  Inverted Bottlenecks' and its appendix tables): optional `start` k x k
  depthwise, 1x1 expansion to `exp` times the input width, optional
  `middle` k x k depthwise, linear 1x1 projection to `out`. A kernel of 0
  leaves that depthwise out: middle only is IB (V2's inverted residual),
  start only ConvNeXt-like, both ExtraDW, neither FFN."""
  start: int
  middle: int
  exp: float
  out: int
  stride: int


@dataclasses.dataclass(frozen=True)
class MQA:
  """V4 Mobile MQA row (the paper's section 'Mobile MQA'; timm's `mqa_..._h
  {heads}_v{kv_stride}_d{key_dim}` entries): BatchNorm pre-norm, `heads`
  query heads of `key_dim` sharing one key and one value head (each
  downsampled by a `kernel` x `kernel` depthwise conv of stride `kv_stride`
  + BN when kv_stride > 1), a 1x1 output projection to `out`, layer scale,
  residual. Heads and key_dim do not scale with alpha (timm's `_075`)."""
  heads: int
  key_dim: int
  kv_stride: int
  out: int
  kernel: int = 3


@dataclasses.dataclass(frozen=True)
class Head:
  """What follows global pooling. `features`: a 1x1 conv applied to the
  pooled 1x1 map, not shrunk for alpha < 1; V3's has a bias and no BN (so a
  Dense), V4's (`batch_norm`) no bias and a BatchNorm."""
  features: int | None = None
  activation: str = 'identity'
  batch_norm: bool = False


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A paper table plus the family's width rounding ('int' for V1: int(alpha
  * c); 'divisible' for V2-V4: make_divisible(alpha * c, 8)), its BatchNorm
  decay and the row kind that carries the expansion factor; for V4 the
  activation of the UIB and FusedIB rows and the initial layer scale of
  the UIB and MQA rows (None: no layer scale; the hybrids' 1e-5)."""
  rows: tuple
  head: Head
  rounding: str
  bn_momentum: float
  has_expansion: bool
  block_activation: str = 'relu'
  layer_scale: float | None = None


# MobileNet V1, paper table 1. The activation is ReLU6 as in the reference
# implementations (TF-slim, Keras); the paper's figure 3 says ReLU. The table's
# last 'Conv dw / s2' keeps the 7x7 map, so its stride is 1 (a typo in the
# paper, stride 1 in every reference implementation).
MOBILENET_V1 = Architecture(
    rows=(
        Conv(3, 32, 2, 'relu6'),
        Separable(64, 1),
        Separable(128, 2),
        Separable(128, 1),
        Separable(256, 2),
        Separable(256, 1),
        Separable(512, 2),
        Separable(512, 1, repeat=5),
        Separable(1024, 2),
        Separable(1024, 1),
    ),
    head=Head(),
    rounding='int',
    bn_momentum=0.99,
    has_expansion=False,
)

# MobileNet V2, paper table 2 (t, c, n, s). The final classifier row
# 'conv2d 1x1, k' is the Head's classifier.
MOBILENET_V2 = Architecture(
    rows=(
        Conv(3, 32, 2, 'relu6'),
        Bottleneck(1, 16, 1, 1),
        Bottleneck(6, 24, 2, 2),
        Bottleneck(6, 32, 3, 2),
        Bottleneck(6, 64, 4, 2),
        Bottleneck(6, 96, 3, 1),
        Bottleneck(6, 160, 3, 2),
        Bottleneck(6, 320, 1, 1),
        Conv(1, 1280, 1, 'relu6', width='not_shrunk'),
    ),
    head=Head(),
    rounding='divisible',
    bn_momentum=0.999,
    has_expansion=True,
)

_RE, _HS = 'relu', 'hard_swish'

# MobileNetV3-Large, paper table 1.
MOBILENET_V3_LARGE = Architecture(
    rows=(
        Conv(3, 16, 2, _HS, width='fixed'),
        Bneck(3, 16, 16, False, _RE, 1),
        Bneck(3, 64, 24, False, _RE, 2),
        Bneck(3, 72, 24, False, _RE, 1),
        Bneck(5, 72, 40, True, _RE, 2),
        Bneck(5, 120, 40, True, _RE, 1),
        Bneck(5, 120, 40, True, _RE, 1),
        Bneck(3, 240, 80, False, _HS, 2),
        Bneck(3, 200, 80, False, _HS, 1),
        Bneck(3, 184, 80, False, _HS, 1),
        Bneck(3, 184, 80, False, _HS, 1),
        Bneck(3, 480, 112, True, _HS, 1),
        Bneck(3, 672, 112, True, _HS, 1),
        Bneck(5, 672, 160, True, _HS, 2),
        Bneck(5, 960, 160, True, _HS, 1),
        Bneck(5, 960, 160, True, _HS, 1),
        Conv(1, 960, 1, _HS, width='relative'),
    ),
    head=Head(1280, _HS),
    rounding='divisible',
    bn_momentum=0.999,
    has_expansion=True,
)

# MobileNetV3-Small, paper table 2. The table marks SE on the last 1x1 conv;
# the authors' released models (TF-slim, Keras) have none there, and neither
# do we (that is what gives the published 2.54M parameters).
MOBILENET_V3_SMALL = Architecture(
    rows=(
        Conv(3, 16, 2, _HS, width='fixed'),
        Bneck(3, 16, 16, True, _RE, 2),
        Bneck(3, 72, 24, False, _RE, 2),
        Bneck(3, 88, 24, False, _RE, 1),
        Bneck(5, 96, 40, True, _HS, 2),
        Bneck(5, 240, 40, True, _HS, 1),
        Bneck(5, 240, 40, True, _HS, 1),
        Bneck(5, 120, 48, True, _HS, 1),
        Bneck(5, 144, 48, True, _HS, 1),
        Bneck(5, 288, 96, True, _HS, 2),
        Bneck(5, 576, 96, True, _HS, 1),
        Bneck(5, 576, 96, True, _HS, 1),
        Conv(1, 576, 1, _HS, width='relative'),
    ),
    head=Head(1024, _HS),
    rounding='divisible',
    bn_momentum=0.999,
    has_expansion=True,
)


# MobileNetV4 convolutional models: the paper's appendix tables (MNv4-Conv-S,
# -M, -L), with the layer lists of the authors' TF Model Garden code and of
# timm (`mobilenetv4_conv_*`): the released models, whose sizes the paper's
# printed figures do not all match (README, Costs). ReLU throughout (the
# UIB and FusedIB rows' activation, `block_activation`); expansion ratios are
# relative to the block's input width, as in both codebases. The stem is not
# shrunk for alpha < 1 (timm's `fix_stem`); the 960-wide last 1x1 conv scales
# with alpha. The head is a 1x1 conv to 1280 with BatchNorm after pooling.
# BatchNorm decay 0.99 by default; the ImageNet configs set the authors'
# training values (0.95 for Conv-S, 0.997 for Conv-M/L).
MOBILENET_V4_CONV_SMALL = Architecture(
    rows=(
        Conv(3, 32, 2, _RE, width='not_shrunk'),
        Conv(3, 32, 2, _RE),
        Conv(1, 32, 1, _RE),
        Conv(3, 96, 2, _RE),
        Conv(1, 64, 1, _RE),
        UIB(5, 5, 3, 96, 2),
        UIB(0, 3, 2, 96, 1),
        UIB(0, 3, 2, 96, 1),
        UIB(0, 3, 2, 96, 1),
        UIB(0, 3, 2, 96, 1),
        UIB(3, 0, 4, 96, 1),
        UIB(3, 3, 6, 128, 2),
        UIB(5, 5, 4, 128, 1),
        UIB(0, 5, 4, 128, 1),
        UIB(0, 5, 3, 128, 1),
        UIB(0, 3, 4, 128, 1),
        UIB(0, 3, 4, 128, 1),
        Conv(1, 960, 1, _RE),
    ),
    head=Head(1280, _RE, batch_norm=True),
    rounding='divisible',
    bn_momentum=0.99,
    has_expansion=True,
)

MOBILENET_V4_CONV_MEDIUM = Architecture(
    rows=(
        Conv(3, 32, 2, _RE, width='not_shrunk'),
        FusedIB(3, 4, 48, 2),
        UIB(3, 5, 4, 80, 2),
        UIB(3, 3, 2, 80, 1),
        UIB(3, 5, 6, 160, 2),
        UIB(3, 3, 4, 160, 1),
        UIB(3, 3, 4, 160, 1),
        UIB(3, 5, 4, 160, 1),
        UIB(3, 3, 4, 160, 1),
        UIB(3, 0, 4, 160, 1),
        UIB(0, 0, 2, 160, 1),
        UIB(3, 0, 4, 160, 1),
        UIB(5, 5, 6, 256, 2),
        UIB(5, 5, 4, 256, 1),
        UIB(3, 5, 4, 256, 1),
        UIB(3, 5, 4, 256, 1),
        UIB(0, 0, 4, 256, 1),
        UIB(3, 0, 4, 256, 1),
        UIB(3, 5, 2, 256, 1),
        UIB(5, 5, 4, 256, 1),
        UIB(0, 0, 4, 256, 1),
        UIB(0, 0, 4, 256, 1),
        UIB(5, 0, 2, 256, 1),
        Conv(1, 960, 1, _RE),
    ),
    head=Head(1280, _RE, batch_norm=True),
    rounding='divisible',
    bn_momentum=0.99,
    has_expansion=True,
)

MOBILENET_V4_CONV_LARGE = Architecture(
    rows=(
        Conv(3, 24, 2, _RE, width='not_shrunk'),
        FusedIB(3, 4, 48, 2),
        UIB(3, 5, 4, 96, 2),
        UIB(3, 3, 4, 96, 1),
        UIB(3, 5, 4, 192, 2),
        UIB(3, 3, 4, 192, 1),
        UIB(3, 3, 4, 192, 1),
        UIB(3, 3, 4, 192, 1),
        UIB(3, 5, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        UIB(3, 0, 4, 192, 1),
        UIB(5, 5, 4, 512, 2),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 3, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 3, 4, 512, 1),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        Conv(1, 960, 1, _RE),
    ),
    head=Head(1280, _RE, batch_norm=True),
    rounding='divisible',
    bn_momentum=0.99,
    has_expansion=True,
)


# MobileNetV4 hybrids: Conv-M/L's tables with Mobile MQA rows in the last
# two stages (kv downsampled by 2 in the stride-16 stage), the V4 paper's
# appendix tables MNv4-Hybrid-M/L with the layer lists of the released
# models (timm `mobilenetv4_hybrid_*`, TF Model Garden `MNV4HybridMedium`/
# `MNV4HybridLarge` block specs), whose UIBs differ from Conv-M/L's in
# places. Layer scale 1e-5 on every UIB and MQA block; Hybrid-L uses GELU
# in every layer (stem, blocks, last conv and head).
_GE = 'gelu'

MOBILENET_V4_HYBRID_MEDIUM = Architecture(
    rows=(
        Conv(3, 32, 2, _RE, width='not_shrunk'),
        FusedIB(3, 4, 48, 2),
        UIB(3, 5, 4, 80, 2),
        UIB(3, 3, 2, 80, 1),
        UIB(3, 5, 6, 160, 2),
        UIB(0, 0, 2, 160, 1),
        UIB(3, 3, 4, 160, 1),
        UIB(3, 5, 4, 160, 1),
        MQA(4, 64, 2, 160),
        UIB(3, 3, 4, 160, 1),
        MQA(4, 64, 2, 160),
        UIB(3, 0, 4, 160, 1),
        MQA(4, 64, 2, 160),
        UIB(3, 3, 4, 160, 1),
        MQA(4, 64, 2, 160),
        UIB(3, 0, 4, 160, 1),
        UIB(5, 5, 6, 256, 2),
        UIB(5, 5, 4, 256, 1),
        UIB(3, 5, 4, 256, 1),
        UIB(3, 5, 4, 256, 1),
        UIB(0, 0, 2, 256, 1),
        UIB(3, 5, 2, 256, 1),
        UIB(0, 0, 2, 256, 1),
        UIB(0, 0, 4, 256, 1),
        MQA(4, 64, 1, 256),
        UIB(3, 0, 4, 256, 1),
        MQA(4, 64, 1, 256),
        UIB(5, 5, 4, 256, 1),
        MQA(4, 64, 1, 256),
        UIB(5, 0, 4, 256, 1),
        MQA(4, 64, 1, 256),
        UIB(5, 0, 4, 256, 1),
        Conv(1, 960, 1, _RE),
    ),
    head=Head(1280, _RE, batch_norm=True),
    rounding='divisible',
    bn_momentum=0.99,
    has_expansion=True,
    layer_scale=1e-5,
)

MOBILENET_V4_HYBRID_LARGE = Architecture(
    rows=(
        Conv(3, 24, 2, _GE, width='not_shrunk'),
        FusedIB(3, 4, 48, 2),
        UIB(3, 5, 4, 96, 2),
        UIB(3, 3, 4, 96, 1),
        UIB(3, 5, 4, 192, 2),
        UIB(3, 3, 4, 192, 1),
        UIB(3, 3, 4, 192, 1),
        UIB(3, 3, 4, 192, 1),
        UIB(3, 5, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        UIB(5, 3, 4, 192, 1),
        MQA(8, 48, 2, 192),
        UIB(5, 3, 4, 192, 1),
        MQA(8, 48, 2, 192),
        UIB(5, 3, 4, 192, 1),
        MQA(8, 48, 2, 192),
        UIB(5, 3, 4, 192, 1),
        MQA(8, 48, 2, 192),
        UIB(3, 0, 4, 192, 1),
        UIB(5, 5, 4, 512, 2),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 5, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 3, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 0, 4, 512, 1),
        UIB(5, 3, 4, 512, 1),
        UIB(5, 5, 4, 512, 1),
        MQA(8, 64, 1, 512),
        UIB(5, 0, 4, 512, 1),
        MQA(8, 64, 1, 512),
        UIB(5, 0, 4, 512, 1),
        MQA(8, 64, 1, 512),
        UIB(5, 0, 4, 512, 1),
        MQA(8, 64, 1, 512),
        UIB(5, 0, 4, 512, 1),
        Conv(1, 960, 1, _GE),
    ),
    head=Head(1280, _GE, batch_norm=True),
    rounding='divisible',
    bn_momentum=0.99,
    has_expansion=True,
    block_activation=_GE,
    layer_scale=1e-5,
)


def standard_convolutions(arch: Architecture) -> Architecture:
  """V1 paper table 4's baseline: each depthwise-separable pair replaced by
  one full 3x3 convolution with the same output width and stride."""
  rows = []
  for row in arch.rows:
    if isinstance(row, Separable):
      rows += [Conv(3, row.out, row.stride, 'relu6')] * row.repeat
    else:
      rows.append(row)
  return dataclasses.replace(arch, rows=tuple(rows))


def minimalistic(arch: Architecture) -> Architecture:
  """V3 'minimalistic' models (the authors' TF-slim/Keras variants): no SE,
  no hard-swish, 3x3 kernels only."""
  def simplify(row):
    if isinstance(row, Bneck):
      return dataclasses.replace(row, kernel=3, se=False, activation='relu')
    return dataclasses.replace(row, activation='relu')
  return dataclasses.replace(
      arch, rows=tuple(simplify(r) for r in arch.rows),
      head=dataclasses.replace(arch.head, activation='relu'))


# The registry: model name -> architecture (`models.REGISTRY`). Here, with
# the tables, so that `config_check` knows the names without importing jax.
ARCHITECTURES: dict[str, Architecture] = {
    'mobilenet_v1': MOBILENET_V1,
    'mobilenet_v1_standard': standard_convolutions(MOBILENET_V1),
    'mobilenet_v2': MOBILENET_V2,
    'mobilenet_v3_large': MOBILENET_V3_LARGE,
    'mobilenet_v3_small': MOBILENET_V3_SMALL,
    'mobilenet_v3_large_minimal': minimalistic(MOBILENET_V3_LARGE),
    'mobilenet_v3_small_minimal': minimalistic(MOBILENET_V3_SMALL),
    'mobilenet_v4_conv_small': MOBILENET_V4_CONV_SMALL,
    'mobilenet_v4_conv_medium': MOBILENET_V4_CONV_MEDIUM,
    'mobilenet_v4_conv_large': MOBILENET_V4_CONV_LARGE,
    'mobilenet_v4_hybrid_medium': MOBILENET_V4_HYBRID_MEDIUM,
    'mobilenet_v4_hybrid_large': MOBILENET_V4_HYBRID_LARGE,
}
