"""Hardware override for TPU VMs: takes a recipe and changes only what the
hardware decides: bfloat16 compute (`model.ops` stays 'auto', which is the
`reference` op set on TPU).

  python -m mobilenet_jax.main --workdir=gs://BUCKET/runs/v2 \
      --config=configs/tpu.py:recipe=imagenet_mobilenet_v2,alpha=0.75

`recipe=` comes first; the remaining arguments go to the recipe.
"""

from mobilenet_jax import config_files


def get_config(arg='recipe=imagenet_mobilenet_v2'):
  recipe, _, rest = arg.partition(',')
  key, _, name = recipe.partition('=')
  if key != 'recipe' or not name:
    raise ValueError('configs/tpu.py needs recipe=<config module> first, e.g. '
                     'recipe=imagenet_mobilenet_v2')
  config = config_files.sibling(__file__, name).get_config(rest or None)
  config.model.dtype = 'bfloat16'
  return config
