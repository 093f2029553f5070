r"""Prints a model's parameters, BatchNorm statistics and multiply-adds.

  python -m mobilenet_jax.profile --model=mobilenet_v2 [--alpha=1.4] \
      [--resolution=192 | --rho=0.857] [--expansion=4] [--num_classes=1000] \
      [--json] [--compare_standard]

Shapes only (`jax.eval_shape`): nothing is compiled, any size runs in seconds.
"""

import json

from absl import app
from absl import flags

from mobilenet_jax import cli
from mobilenet_jax import config_check
from mobilenet_jax import costs
from mobilenet_jax import models

_MODEL = flags.DEFINE_string(
    'model', None, f'Registry name, one of {sorted(models.REGISTRY)}.')
_ALPHA = flags.DEFINE_float('alpha', 1.0, 'Width multiplier.')
_RESOLUTION = flags.DEFINE_integer(
    'resolution', None, 'Input side in pixels (default 224).')
_RHO = flags.DEFINE_float(
    'rho', None, 'Resolution multiplier: side = round(rho * 224).')
_EXPANSION = flags.DEFINE_float(
    'expansion', None, 'Expansion factor t (V2/V3); default: the paper\'s.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classifier width.')
_JSON = flags.DEFINE_bool(
    'json', False, 'Print only the totals, as one JSON object.')
_COMPARE_STANDARD = flags.DEFINE_bool(
    'compare_standard', False,
    'Add the cost with a standard conv in place of each depthwise-separable '
    'pair (V1 paper, section 3.1).')
flags.mark_flag_as_required('model')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _RESOLUTION.value is not None and _RHO.value is not None:
    raise config_check.ConfigError('give --resolution or --rho, not both')
  resolution = _RESOLUTION.value
  if resolution is None:
    rho = 1.0 if _RHO.value is None else _RHO.value
    resolution = models.input_resolution(rho, 224)
  model = models.create_model(
      _MODEL.value, num_classes=_NUM_CLASSES.value, alpha=_ALPHA.value,
      expansion=_EXPANSION.value)
  profile = costs.profile_model(model, resolution)
  if _JSON.value:
    summary = dict(model=_MODEL.value, alpha=_ALPHA.value,
                   resolution=resolution, expansion=_EXPANSION.value,
                   params=profile.params, batch_stats=profile.batch_stats,
                   macs=profile.macs)
    if _COMPARE_STANDARD.value:
      summary['standard_macs'] = profile.standard_macs
    print(json.dumps(summary))
  else:
    print(f'{_MODEL.value}  alpha={_ALPHA.value}  resolution={resolution}  '
          f'expansion={_EXPANSION.value}')
    print(costs.format_table(profile, _COMPARE_STANDARD.value))


if __name__ == '__main__':
  cli.run(main)
