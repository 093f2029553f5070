"""MobileNetV1 width x resolution grid: paper tables 6 and 7 (and figures 4
and 5, which plot all 16 combinations).

alpha in 1.0, 0.75, 0.5, 0.25 x rho in 1.0, 0.857, 0.714, 0.571, which at the
paper's 224 px base are 224, 192, 160, 128 px (input side = round(rho *
data.base_resolution)); on the offline 64 px `shapes` config the same rho
gives 64, 55, 46, 37 px.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v1_width_resolution.py --workdir=runs/v1_grid
  python -m mobilenet_jax.sweep run --launcher=tpu_vm --tpu=NAME --zone=ZONE \
      --config=configs/tpu.py:recipe=imagenet_mobilenet_v1 \
      --sweep=configs/sweeps/v1_width_resolution.py \
      --workdir=gs://BUCKET/sweeps/v1_grid

With an ImageNet recipe, start from imagenet_mobilenet_v1.py (its depthwise
weight-decay choice); the model name is set here so that any base config
trains V1.
"""

ALPHAS = (1.0, 0.75, 0.5, 0.25)
RHOS = (1.0, 0.857, 0.714, 0.571)  # x 224: 224, 192, 160, 128


def get_sweep(h):
  return h.product([
      h.fixed('model.name', 'mobilenet_v1'),
      h.sweep('model.alpha', ALPHAS),
      h.sweep('data.rho', RHOS),
  ])
