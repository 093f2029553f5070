"""timm MobileNet state dicts -> Flax variables of our models.

`from_timm` maps the state dict of a timm (pytorch-image-models 1.0.31)
MobileNet onto `models.create_model`, taking everything from timm's model
name (`timm_model`): our registry name and alpha (the name's `_NNN` suffix /
100), the padding (timm's `tf_*` ports pad like TensorFlow, 'same'; its own
models like PyTorch, 'symmetric') and the BatchNorm epsilon (1e-3 for `tf_*`,
PyTorch's 1e-5 otherwise). The activations are the family's, as in timm.

Covered: mobilenetv1_NNN, mobilenetv2_NNN, mobilenetv3_{large,small}_NNN,
tf_mobilenetv3_{large,small}[_minimal]_NNN, mobilenetv4_conv_{small,medium,
large}[_NNN] and mobilenetv4_hybrid_{medium,large}[_NNN]. Not covered (no
architecture of ours computes them; docs/design.md): depth multipliers
(`*_NNNd`), `mobilenetv1_100h` (a head conv V1 has not), the anti-aliased
and blur-pool V4 (`mobilenetv4_conv_aa_*`, `*_blur_*`) and `mobilenetv3_rw`.

The state dict's tensors are grouped by module (the name before the last
dot), put in timm's call order by name (`NETWORK_ORDER`, `BLOCK_ORDERS`;
safetensors files sort names) and zipped with our weighted layers in call
order (`layer_order.weighted_layers`), checking kinds
and shapes: the first tensor that does not fit is a one-line ConfigError
naming it. Layouts: conv kernels (O, I, kh, kw) -> (kh, kw, I, O), so a
depthwise (C, 1, k, k) becomes (k, k, 1, C); a 1x1 conv where we have a
Dense (V3's head) and a Linear (O, I) -> (I, O); BatchNorm weight, bias,
running_mean, running_var -> scale, bias, mean, var (num_batches_tracked is
dropped); a layer scale's gamma -> the block's layer_scale.
"""

import dataclasses
import json
import pathlib
import re

from flax import traverse_util
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from mobilenet_jax import config_check
from mobilenet_jax import layer_order
from mobilenet_jax import models

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)

# (name pattern, our registry name with {size}/{minimal} filled in from the
# match). Alpha is the `NNN` group / 100 (1.0 when absent).
FAMILIES = (
    (r'mobilenetv1_(?P<alpha>\d{3})', 'mobilenet_v1'),
    (r'mobilenetv2_(?P<alpha>\d{3})', 'mobilenet_v2'),
    (r'(?:tf_)?mobilenetv3_(?P<size>large|small)(?P<minimal>_minimal)?'
     r'_(?P<alpha>\d{3})', 'mobilenet_v3_{size}{minimal}'),
    (r'mobilenetv4_conv_(?P<size>small|medium|large)(?:_(?P<alpha>\d{3}))?',
     'mobilenet_v4_conv_{size}'),
    (r'mobilenetv4_hybrid_(?P<size>medium|large)(?:_(?P<alpha>\d{3}))?',
     'mobilenet_v4_hybrid_{size}'),
)

# timm MobileNets we do not build, and why (pattern -> reason).
NOT_COVERED = (
    (r'.*_\d{3}d', 'a depth multiplier (repeats per stage) our tables lack'),
    (r'mobilenetv1_\d{3}h', "a 1x1 head conv before the classifier our V1 "
     'lacks'),
    (r'mobilenetv4_conv_(aa|blur)_.*', 'anti-aliased (avg / blur-pool) '
     'downsampling our UIB lacks'),
    (r'mobilenetv3_rw', "Ross Wightman's V3 variant, another layer table"),
)

# timm 1.0.31's pretrained_cfg of each covered name's default weights:
# (mean, std, interpolation, crop_pct, input size). Names timm lists without
# weights take their family's values.
PREPROCESSING = {
    'mobilenetv1_': (INCEPTION_MEAN, INCEPTION_STD, 'bicubic', 0.875, 224),
    'mobilenetv1_125': (INCEPTION_MEAN, INCEPTION_STD, 'bicubic', 0.9, 224),
    'mobilenetv2_': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic', 0.875, 224),
    'mobilenetv3_large_075': (IMAGENET_MEAN, IMAGENET_STD, 'bilinear', 0.875,
                              224),
    'mobilenetv3_': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic', 0.875, 224),
    'tf_mobilenetv3_': (INCEPTION_MEAN, INCEPTION_STD, 'bilinear', 0.875,
                        224),
    'mobilenetv4_conv_small_0': (INCEPTION_MEAN, INCEPTION_STD, 'bicubic',
                                 0.875, 224),
    'mobilenetv4_conv_small': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic', 0.875,
                               224),
    'mobilenetv4_conv_medium': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic', 0.95,
                                256),
    'mobilenetv4_conv_large': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic', 0.95,
                               384),
    'mobilenetv4_hybrid_medium_075': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic',
                                      0.95, 224),
    'mobilenetv4_hybrid_medium': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic',
                                  0.95, 256),
    'mobilenetv4_hybrid_large_075': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic',
                                     0.95, 256),
    'mobilenetv4_hybrid_large': (IMAGENET_MEAN, IMAGENET_STD, 'bicubic', 0.95,
                                 384),
}


@dataclasses.dataclass(frozen=True)
class TimmModel:
  """What a timm model name says about our model and its preprocessing."""
  name: str  # our registry name
  alpha: float
  padding: str  # 'same' | 'symmetric'
  bn_epsilon: float
  preprocessing: dict  # mean, std, interpolation, crop_pct, input_size


def parse_name(timm_model: str) -> TimmModel:
  """Our model for a timm architecture name (see the module docstring)."""
  for pattern, reason in NOT_COVERED:
    if re.fullmatch(pattern, timm_model):
      raise config_check.ConfigError(
          f'timm_model {timm_model!r} is not covered: {reason}')
  for pattern, ours in FAMILIES:
    match = re.fullmatch(pattern, timm_model)
    if match:
      break
  else:
    raise config_check.ConfigError(
        f'timm_model must be a timm MobileNet name matching one of '
        f'{[pattern for pattern, _ in FAMILIES]}, got {timm_model!r}')
  groups = match.groupdict()
  name = ours.format(size=groups.get('size'),
                     minimal=groups.get('minimal') or '')
  tf_port = timm_model.startswith('tf_')
  # The longest table key that starts the name.
  key = max((k for k in PREPROCESSING if timm_model.startswith(k)), key=len)
  mean, std, interpolation, crop_pct, size = PREPROCESSING[key]
  return TimmModel(
      name=name,
      alpha=int(groups['alpha']) / 100 if groups.get('alpha') else 1.0,
      padding='same' if tf_port else 'symmetric',
      bn_epsilon=1e-3 if tf_port else 1e-5,
      preprocessing={'mean': list(mean), 'std': list(std),
                     'interpolation': interpolation, 'crop_pct': crop_pct,
                     'input_size': size})


def hub_preprocessing(config_json: str) -> dict:
  """The preprocessing of a model hub `config.json` (its pretrained_cfg),
  in `TimmModel.preprocessing`'s keys (those it has)."""
  cfg = json.loads(pathlib.Path(config_json).read_text())
  cfg = cfg.get('pretrained_cfg', cfg)
  out = {key: cfg[key] for key in ('mean', 'std', 'interpolation',
                                   'crop_pct') if key in cfg}
  if 'input_size' in cfg:
    out['input_size'] = cfg['input_size'][-1]
  return out


def read_state_dict(path: str) -> dict:
  """{name: numpy array} of a `.safetensors` file, or of a `.pth`/`.bin`
  torch state dict (needs torch; a training checkpoint's 'state_dict')."""
  suffix = pathlib.Path(path).suffix
  if not pathlib.Path(path).is_file():
    raise config_check.ConfigError(f'timm_checkpoint {path!r} is not a file')
  if suffix == '.safetensors':
    return safetensors.numpy.load_file(path)
  if suffix not in ('.pth', '.bin', '.pt'):
    raise config_check.ConfigError(
        f'timm_checkpoint must end in .safetensors, .pth, .bin '
        f'or .pt, got {path!r}')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise config_check.ConfigError(
        f'timm_checkpoint {path!r} is a torch file and torch is '
        'not installed; use the .safetensors file') from None
  state = torch.load(path, map_location='cpu', weights_only=True)
  state = state.get('state_dict', state)
  return {k: (v.float() if v.is_floating_point() else v).numpy()
          for k, v in state.items()}


# timm's module names in call order: the network's, then each block type's
# (timm's _efficientnet_blocks.py), told apart by a module only it has.
NETWORK_ORDER = ('conv_stem', 'bn1', 'blocks', 'conv_head', 'bn2',
                 'norm_head', 'classifier')
_SE = ('se.conv_reduce', 'se.conv_expand')
BLOCK_ORDERS = (  # (a module that tells the type, its modules in order);
    # the first whose module the block has: EdgeResidual has a conv_pwl too.
    ('conv_exp', ('conv_exp', 'bn1', *_SE, 'conv_pwl', 'bn2')),
    ('conv_pwl', ('conv_pw', 'bn1', 'conv_dw', 'bn2', *_SE, 'conv_pwl', 'bn3')),
    ('conv_dw', ('conv_dw', 'bn1', *_SE, 'conv_pw', 'bn2')),
    ('pw_proj.conv', ('dw_start.conv', 'dw_start.bn', 'pw_exp.conv',
                      'pw_exp.bn', 'dw_mid.conv', 'dw_mid.bn', *_SE,
                      'pw_proj.conv', 'pw_proj.bn', 'dw_end.conv',
                      'dw_end.bn', 'layer_scale')),
    ('attn.output.proj', ('norm', 'attn.query.proj', 'attn.key.down_conv',
                          'attn.key.norm', 'attn.key.proj',
                          'attn.value.down_conv', 'attn.value.norm',
                          'attn.value.proj', 'attn.output.proj',
                          'layer_scale')),
    ('conv', ('conv', 'bn1')),
)


def _call_order(modules) -> list:
  """timm's module names (a state dict's, in any order: safetensors files
  sort them) in call order; a ConfigError names one that has no place."""
  blocks, keys = {}, {}
  for module in modules:
    match = re.fullmatch(r'blocks\.(\d+)\.(\d+)\.(.+)', module)
    if match:
      stage, index, sub = match.groups()
      blocks.setdefault((int(stage), int(index)), set()).add(sub)
    elif module not in NETWORK_ORDER:
      raise config_check.ConfigError(
          f'cannot place timm module {module!r}: not one of '
          f'{NETWORK_ORDER} or blocks.N.M.*')
  for (stage, index), subs in blocks.items():
    order = next((order for marker, order in BLOCK_ORDERS if marker in subs),
                 ())
    for sub in subs:
      if sub not in order:
        raise config_check.ConfigError(
            f'cannot place timm module blocks.{stage}.{index}.'
            f'{sub}: not in a timm MobileNet block {order}')
      keys[f'blocks.{stage}.{index}.{sub}'] = (
          NETWORK_ORDER.index('blocks'), stage, index, order.index(sub))
  for module in modules:
    if module in NETWORK_ORDER:
      keys[module] = (NETWORK_ORDER.index(module),)
  return sorted(modules, key=keys.__getitem__)


def _timm_layers(state_dict: dict):
  """timm's weighted modules in call order: [(module name, kind,
  {(collection, key): (array in our layout, timm tensor name)})]."""
  grouped = {}
  for name, value in state_dict.items():
    module, _, tensor = name.rpartition('.')
    grouped.setdefault(module, {})[tensor] = np.asarray(value)
  modules = {module: grouped[module] for module in _call_order(grouped)}
  out = []
  for module, tensors in modules.items():
    tensors.pop('num_batches_tracked', None)
    names = {key: f'{module}.{key}' for key in tensors}
    if set(tensors) == {'weight', 'bias', 'running_mean', 'running_var'}:
      kind = 'batch_norm'
      keys = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'),
              'running_var': ('batch_stats', 'var')}
    elif 'weight' in tensors and set(tensors) <= {'weight', 'bias'} and (
        tensors['weight'].ndim in (2, 4)):
      weight = tensors['weight']
      if weight.ndim == 4:
        kind = 'depthwise' if weight.shape[1] == 1 < weight.shape[0] else 'conv'
        tensors['weight'] = weight.transpose(2, 3, 1, 0)
      else:
        kind = 'dense'
        tensors['weight'] = weight.T
      keys = {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')}
    elif set(tensors) == {'gamma'} and module.endswith('.layer_scale'):
      kind = 'layer_scale'
      keys = {'gamma': ('params', 'layer_scale')}
    else:
      shapes = ', '.join(f'{names[k]} {tuple(v.shape)}'
                         for k, v in tensors.items())
      raise config_check.ConfigError(
          f'cannot place timm tensors {shapes}: not a conv, '
          'linear or BatchNorm module of a covered MobileNet')
    out.append((module, kind, {keys[k]: (v, names[k])
                               for k, v in tensors.items()}))
  return out


def from_timm(state_dict: dict, timm_model: str):
  """Converts a timm MobileNet state dict onto our model.

  Args:
    state_dict: {tensor name: array} of timm model `timm_model`.
    timm_model: timm's architecture name, e.g. 'mobilenetv3_large_100'.

  Returns:
    (model, variables, parsed): our module, {'params', 'batch_stats'} whose
    logits equal timm's on the same (NHWC) images, and the `TimmModel`.

  Raises:
    ConfigError: a name we do not cover, or a tensor that does not fit,
      in one line naming it.
  """
  parsed = parse_name(timm_model)
  theirs = _timm_layers(state_dict)
  if not theirs or theirs[-1][1] != 'dense':
    raise config_check.ConfigError(
        f'the {timm_model} state dict ends without a classifier '
        '(Linear) layer; convert a model with num_classes > 0')
  num_classes = theirs[-1][2]['params', 'kernel'][0].shape[1]
  model = models.create_model(
      parsed.name, alpha=parsed.alpha, num_classes=num_classes,
      padding=parsed.padding, bn_epsilon=parsed.bn_epsilon)
  ours, abstract = layer_order.weighted_layers(model)
  flat_abstract = traverse_util.flatten_dict(abstract)
  what = f'{parsed.name} (alpha={parsed.alpha})'
  flat = {}
  for (path, kind), (module, timm_kind, tensors) in zip(ours, theirs):
    kernel = tensors.get(('params', 'kernel'))
    if (kind, timm_kind) == ('dense', 'conv') and kernel[0].shape[:2] == (1, 1):
      tensors['params', 'kernel'] = (kernel[0][0, 0], kernel[1])
      timm_kind = 'dense'
    expected = {(col, key): value
                for (col, *rest, key), value in flat_abstract.items()
                if tuple(rest) == path}
    where = f'{what} {"/".join(path)!r} ({kind})'
    if kind != timm_kind:
      raise config_check.ConfigError(
          f'timm module {module!r} ({timm_kind}) lines up with '
          f'{where}; is timm_model right?')
    for key in sorted(set(expected) | set(tensors)):
      if key not in tensors:
        raise config_check.ConfigError(
            f'timm module {module!r} has no {key[1]} for {where}')
      value, tensor_name = tensors[key]
      if key not in expected:
        raise config_check.ConfigError(
            f'cannot place timm tensor {tensor_name!r}: {where} '
            f'has no {key[1]}')
      if value.shape != expected[key].shape:
        raise config_check.ConfigError(
            f'timm tensor {tensor_name!r} has shape {value.shape} (our '
            f'layout) where {where} has {key[1]} {expected[key].shape}; is '
            'timm_model right?')
      flat[(key[0], *path, key[1])] = jnp.asarray(value, expected[key].dtype)
  if len(ours) != len(theirs):
    first = (f'ours {"/".join(ours[len(theirs)][0])!r}'
             if len(ours) > len(theirs) else
             f'timm {theirs[len(ours)][0]!r}')
    raise config_check.ConfigError(
        f'{what} has {len(ours)} weighted layers, the '
        f'{timm_model} state dict {len(theirs)}; the first '
        f'unmatched is {first}')
  return model, traverse_util.unflatten_dict(flat), parsed
