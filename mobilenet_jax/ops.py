"""Op sets: which modules compute a network's layers.

One network, two op sets, with the same arguments and the same variables:

- `reference`: the papers' layers in plain Flax Linen (`mobilenet_jax.layers`:
  `nn.Conv`, depthwise as `nn.Conv(feature_group_count=C)`, `nn.BatchNorm`,
  no custom gradients in float32; in bfloat16 a custom VJP only makes the
  kernel and bias gradients float32, `layers.float32_weight_grad`). What
  TPUs, GPUs and export run, and what forward-mode autodiff (`jax.jvp`,
  `jax.hessian`, float32) needs.
- `cpu`: the same layers computed with XLA:CPU kernels
  (`mobilenet_jax.cpu.layers`), each tested equal to its reference
  counterpart in values and gradients.

`auto` is `cpu` on the CPU backend and `reference` on any other. The blocks
receive an `OpSet` and build every conv + BatchNorm + activation through
`conv_bn` and every squeeze-and-excite through `squeeze_excite` (the way
flax's ResNet receives its `conv` and `norm`).
"""

import dataclasses
from typing import Callable

import flax.linen as nn
import jax

from mobilenet_jax import config_check
from mobilenet_jax import layers
from mobilenet_jax.cpu import layers as cpu_layers


@dataclasses.dataclass(frozen=True)
class OpSet:
  """`conv_bn(features, kernel_size, strides, activation, depthwise,
  bn_momentum=, bn_epsilon=, padding=, dtype=, name=)` builds `layers.ConvBN`'s
  computation; `squeeze_excite(squeeze_features, dtype=, name=)` builds
  `layers.SqueezeExcite`'s."""
  name: str
  conv_bn: Callable[..., nn.Module]
  squeeze_excite: Callable[..., nn.Module]


OP_SETS = {
    'reference': OpSet('reference', layers.ConvBN, layers.SqueezeExcite),
    'cpu': OpSet('cpu', cpu_layers.conv_bn, cpu_layers.SqueezeExcite),
}
# The allowed model.ops values: 'auto' and OP_SETS' keys (a test checks).
NAMES = config_check.OP_SET_NAMES

# `auto` per backend; any backend not listed gets `reference`.
AUTO = {'cpu': 'cpu'}


def resolve(name: str, backend: str | None = None) -> str:
  """The op set `name` stands for: 'auto' becomes `AUTO.get(backend,
  'reference')` (`backend` defaults to `jax.default_backend()`); the other
  names pass through."""
  config_check.one_of('ops', name, NAMES)
  if name != 'auto':
    return name
  return AUTO.get(backend or jax.default_backend(), 'reference')


def get(name: str) -> OpSet:
  """The `OpSet` of `name` ('auto' resolved for the default backend)."""
  return OP_SETS[resolve(name)]
