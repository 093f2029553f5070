"""Depthwise-separable vs standard convolutions: V1 paper table 4.

mobilenet_v1 against mobilenet_v1_standard (every depthwise + pointwise pair
replaced by one full 3x3 conv), with everything else equal.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v1_separable_vs_standard.py --workdir=runs/v1_sep
"""

MODELS = ('mobilenet_v1', 'mobilenet_v1_standard')


def get_sweep(h):
  return h.sweep('model.name', MODELS)
