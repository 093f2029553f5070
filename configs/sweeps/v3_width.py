"""MobileNetV3-Large and -Small x width multiplier 0.75, 1.0, 1.25 (V3 paper
table 3 reports 0.75 and 1.0; 1.25 extends the curve).

Only the width is swept: for V3, model.expansion multiplies every block's
expansion size (whose paper values already vary per block), so a V2-style
t = 8 means something else here.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v3_width.py --workdir=runs/v3_width
"""

MODELS = ('mobilenet_v3_large', 'mobilenet_v3_small')
ALPHAS = (0.75, 1.0, 1.25)


def get_sweep(h):
  return h.product([
      h.sweep('model.name', MODELS),
      h.sweep('model.alpha', ALPHAS),
  ])
