r"""MobileNetV1 width and resolution multipliers: paper tables 6 and 7.

Trains the runs of configs/sweeps/v1_width_resolution.py that the two tables
report (alpha in --alphas at rho = 1: table 6; rho in --rhos at alpha = 1:
table 7) and writes our top-1 next to the paper's. The cost columns are our
model's at the paper's setting (224 px, 1000 classes), whatever the runs
train on.

  python -m experiments.width_resolution      # offline `shapes`, CPU
  python -m experiments.width_resolution --steps=0 \
      --alphas=1.0,0.75,0.5,0.25 --rhos=1.0,0.857,0.714,0.571 \
      --config=configs/tpu.py:recipe=imagenet_mobilenet_v1 \
      --launcher=tpu_vm --tpu=NAME --zone=ZONE \
      --workdir=gs://BUCKET/experiments/width_resolution \
      --output=experiments/results/width_resolution_imagenet.md
"""

import sys
from typing import Sequence

from absl import app
from absl import flags

from configs.sweeps import v1_width_resolution
from experiments import harness
from mobilenet_jax import sweep_summary

SWEEP_FILE = 'configs/sweeps/v1_width_resolution.py'
# V1 paper table 6 (224 px): alpha -> (top-1 %, MACs (M), params (M)).
TABLE_6 = {1.0: (70.6, 569, 4.2), 0.75: (68.4, 325, 2.6),
           0.5: (63.7, 149, 1.3), 0.25: (50.6, 41, 0.5)}
# V1 paper table 7 (alpha 1.0): resolution -> (top-1 %, MACs (M), params (M)).
TABLE_7 = {224: (70.6, 569, 4.2), 192: (69.1, 418, 4.2),
           160: (67.2, 290, 4.2), 128: (64.4, 186, 4.2)}

FLAGS = flags.FLAGS


def _row(paper, profile, row):
  """Cells: paper top-1, ours top-1, paper / ours MACs, paper / ours params,
  our run's resolution and throughput."""
  top1, macs, params = paper or ('', '', '')
  return [str(top1), harness.percent(row), str(macs),
          harness.millions(profile.macs, '.0f'), str(params),
          harness.millions(profile.params, '.2f'),
          '' if row is None or row.resolution is None else str(row.resolution),
          '' if row is None or row.img_per_sec is None
          else f'{row.img_per_sec:.0f}']


def tables(results: Sequence[tuple[dict, sweep_summary.Row | None]],
           dataset: str) -> list[tuple[str, str]]:
  """Table 6 (runs at rho = 1) and table 7 (runs at alpha = 1)."""
  columns = ['paper top-1 (%), ImageNet', f'ours top-1 (%), {dataset}',
             'paper MACs (M)', 'ours MACs (M)', 'paper params (M)',
             'ours params (M)', 'ours: trained at (px)', 'ours: img/s']
  width, resolution = [], []
  for run, row in results:
    alpha, rho = run['model.alpha'], run['data.rho']
    profile = harness.paper_costs('mobilenet_v1', alpha=alpha, rho=rho)
    if rho == 1.0:
      width.append([f'{alpha:g}', *_row(TABLE_6.get(alpha), profile, row)])
    if alpha == 1.0:
      resolution.append([str(profile.resolution),
                         *_row(TABLE_7.get(profile.resolution), profile, row)])
  return [
      ('Table 6: width multiplier (224 px)',
       sweep_summary.markdown_table(['alpha', *columns], width)),
      ('Table 7: resolution multiplier (alpha 1.0)',
       sweep_summary.markdown_table(['resolution (px)', *columns], resolution)),
  ]


def _floats(name: str, allowed: Sequence[float]) -> list[float]:
  values = [float(v) for v in FLAGS[name].value]
  for value in values:
    if value not in allowed:
      raise ValueError(f'--{name} must be among {list(allowed)}, got {value}')
  return values


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    alphas = _floats('alphas', v1_width_resolution.ALPHAS)
    rhos = _floats('rhos', v1_width_resolution.RHOS)
    result = harness.run(
        SWEEP_FILE, lambda run: (run['model.alpha'] in alphas and
                                 run['data.rho'] in rhos and
                                 1.0 in (run['model.alpha'], run['data.rho'])))
  except ValueError as e:
    sys.exit(f'error: {e}')
  if result is None:
    return
  results, failed = result
  dataset = FLAGS.config.data.dataset
  harness.write_report(harness.report(
      'MobileNetV1 width and resolution multipliers (V1 paper tables 6, 7)',
      'experiments.width_resolution',
      [f'Ours: trained on {harness.trained_on()}; resolution = round(rho x '
       'base). Paper accuracy is ImageNet top-1 at 224 px x rho; ours is on '
       'other data, so compare trends, not values.',
       'Cost columns "ours" are our models at the paper\'s setting (224 px x '
       'rho, 1000 classes), multiply-adds of convolutions and dense layers '
       '(paper section 3.1), from mobilenet_jax.costs.'],
      tables(results, dataset)))
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  harness.define_flags('width_resolution', steps=400)
  # A subset, so that the offline default fits in 15 minutes on 2 CPU cores;
  # --alphas=1.0,0.75,0.5,0.25 --rhos=1.0,0.857,0.714,0.571 for full tables.
  flags.DEFINE_list('alphas', ['1.0', '0.5', '0.25'],
                    'Width multipliers of table 6.')
  flags.DEFINE_list('rhos', ['1.0', '0.714', '0.571'],
                    'Resolution multipliers of table 7.')
  app.run(main)
