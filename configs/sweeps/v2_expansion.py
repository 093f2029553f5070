"""MobileNetV2 expansion factor t (model.expansion): t in 1, 2, 4, 6, 8.

t replaces the paper's t = 6 in every bottleneck after the first (table 2);
the V2 paper (section 4) finds rates between 5 and 10 give nearly the same
accuracy-cost curves, and publishes no per-t ImageNet table.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v2_expansion.py --workdir=runs/v2_t
"""

EXPANSIONS = (1.0, 2.0, 4.0, 6.0, 8.0)


def get_sweep(h):
  return h.product([
      h.fixed('model.name', 'mobilenet_v2'),
      h.sweep('model.expansion', EXPANSIONS),
  ])
