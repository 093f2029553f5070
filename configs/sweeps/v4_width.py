"""MobileNetV4-Conv-S, -M and -L x width multiplier 0.5, 0.75, 1.0 (timm
ships Conv-S at 0.35 and 0.5; the paper trains only 1.0).

Only the width is swept: model.expansion multiplies every block's expansion
ratio (as for V3), which the tables already vary per block.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v4_width.py --workdir=runs/v4_width
"""

MODELS = ('mobilenet_v4_conv_small', 'mobilenet_v4_conv_medium',
          'mobilenet_v4_conv_large')
ALPHAS = (0.5, 0.75, 1.0)


def get_sweep(h):
  return h.product([
      h.sweep('model.name', MODELS),
      h.sweep('model.alpha', ALPHAS),
  ])
