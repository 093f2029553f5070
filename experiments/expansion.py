r"""MobileNetV2 expansion factor t: the t in 1, 2, 4, 6, 8 ablation.

Trains the runs of configs/sweeps/v2_expansion.py with t in --expansions and
writes our top-1 and costs. The V2 paper publishes no per-t ImageNet table
(section 4: expansion rates between 5 and 10 give nearly identical
accuracy-cost curves); its only point is the network itself, t = 6 (table 4:
72.0% top-1, 300M MACs, 3.4M params). The cost columns are our models' at
the paper's setting (alpha 1.0, 224 px, 1000 classes), whatever the runs
train on.

  python -m experiments.expansion       # offline `shapes`, CPU
  python -m experiments.expansion --steps=0 \
      --config=configs/tpu.py:recipe=imagenet_mobilenet_v2 \
      --launcher=tpu_vm --tpu=NAME --zone=ZONE \
      --workdir=gs://BUCKET/experiments/expansion \
      --output=experiments/results/expansion_imagenet.md
"""

import sys
from typing import Sequence

from absl import app
from absl import flags

from configs.sweeps import v2_expansion
from experiments import harness
from mobilenet_jax import sweep_summary

SWEEP_FILE = 'configs/sweeps/v2_expansion.py'
# V2 paper table 4, MobileNetV2 (t = 6): top-1 %, MACs (M), params (M).
PAPER = {6.0: (72.0, 300, 3.4)}

FLAGS = flags.FLAGS


def tables(results: Sequence[tuple[dict, sweep_summary.Row | None]],
           dataset: str) -> list[tuple[str, str]]:
  header = ['t', 'paper top-1 (%), ImageNet', f'ours top-1 (%), {dataset}',
            'paper MACs (M)', 'ours MACs (M)', 'paper params (M)',
            'ours params (M)', 'ours: MACs as trained (M)', 'ours: img/s']
  rows = []
  for run, row in results:
    t = run['model.expansion']
    top1, macs, params = PAPER.get(t, ('-', '-', '-'))
    profile = harness.paper_costs('mobilenet_v2', expansion=t)
    rows.append([
        f'{t:g}', str(top1), harness.percent(row), str(macs),
        harness.millions(profile.macs, '.0f'), str(params),
        harness.millions(profile.params, '.2f'),
        '' if row is None else harness.millions(row.macs),
        '' if row is None or row.img_per_sec is None
        else f'{row.img_per_sec:.0f}'])
  return [('Expansion factor t (MobileNetV2, alpha 1.0 costs)',
           sweep_summary.markdown_table(header, rows))]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    expansions = [float(t) for t in FLAGS.expansions]
    for t in expansions:
      if t not in v2_expansion.EXPANSIONS:
        raise ValueError(f'--expansions must be among '
                         f'{list(v2_expansion.EXPANSIONS)}, got {t}')
    result = harness.run(
        SWEEP_FILE, lambda run: run['model.expansion'] in expansions)
  except ValueError as e:
    sys.exit(f'error: {e}')
  if result is None:
    return
  results, failed = result
  config = FLAGS.config
  harness.write_report(harness.report(
      'MobileNetV2 expansion factor t',
      'experiments.expansion',
      [f'Ours: trained on {harness.trained_on()} at alpha '
       f'{config.model.alpha:g}, rho {config.data.rho:g}.',
       'The V2 paper has no per-t ImageNet table (section 4: rates between 5 '
       'and 10 give nearly identical curves); "-" marks the values it does '
       'not publish. Its 3.4M params for t = 6 are 3.47M in TF-slim\'s table '
       'and 3,504,872 in Keras and torchvision, as here.',
       'Cost columns "ours" are our models at the paper\'s setting (alpha '
       '1.0, 224 px, 1000 classes), from mobilenet_jax.costs.'],
      tables(results, config.data.dataset)))
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  harness.define_flags('expansion', steps=500)
  flags.DEFINE_list('expansions', [str(t) for t in v2_expansion.EXPANSIONS],
                    'Expansion factors t to train.')
  app.run(main)
