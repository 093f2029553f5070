"""What the experiments share: run (part of) a sweep file with the flags of
`mobilenet_jax.sweep`, collect its rows, write a report with its command.

An experiment is `python -m experiments.NAME [--config=...] [--workdir=...]
[--launcher=tpu_vm --tpu=... --zone=...] [--steps=N] [--dry_run]
[--config.KEY=VALUE ...]`: the default config is the offline
configs/default.py and the default workdir runs/experiments/NAME.
"""

import functools
import shlex
import sys
from typing import Callable, Sequence

from absl import flags
from etils import epath
from ml_collections import config_flags

from mobilenet_jax import costs
from mobilenet_jax import hyper
from mobilenet_jax import models
from mobilenet_jax import sweep
from mobilenet_jax import sweep_runs
from mobilenet_jax import sweep_summary

FLAGS = flags.FLAGS


def define_flags(name: str, steps: int) -> None:
  """The sweep flags with this experiment's defaults, plus --steps and
  --output."""
  sweep.define_flags(config='configs/default.py',
                     workdir=f'runs/experiments/{name}')
  flags.DEFINE_integer('steps', steps, 'num_train_steps of every run; 0 '
                       'keeps the config\'s (full-scale recipes).')
  flags.DEFINE_string('output', f'experiments/results/{name}.md',
                      'Where the markdown report goes.')


# A run and its summary row (None if it has no run directory).
Result = tuple[hyper.Run, sweep_summary.Row | None]


def run(sweep_file: str, select: Callable[[hyper.Run], bool] = lambda _: True,
        overrides: hyper.Run | None = None
        ) -> tuple[list[Result], bool] | None:
  """Runs the sweep file's runs that `select` keeps (under the whole sweep's
  names), each with `overrides` (the experiment's own flags) and --steps
  added.

  Returns:
    ([(run, its Row, None if it has none)], whether any failed), or None on
    a dry run.
  """
  overrides = dict(overrides or {})
  if FLAGS.steps:
    overrides['num_train_steps'] = FLAGS.steps
  for key in overrides:
    if any(a.startswith(f'--config.{key}=') for a in sys.argv):
      raise ValueError(f'this experiment sets {key} from its own flags '
                       f'(--steps, --rho, ...); drop --config.{key}')
  spec = sweep.load_sweep(sweep_file)
  chosen = [({**run, **overrides}, name)
            for run, name in zip(spec.runs, sweep_runs.run_names(spec.runs))
            if select(run)]
  if not chosen:
    raise ValueError('the experiment\'s flags select no run of the sweep')
  runs, names = zip(*chosen)
  statuses = sweep.run_from_flags(runs, tpus=spec.tpus, zone=spec.zone,
                                  names=names)
  if FLAGS.dry_run:
    return None
  rows = {row.name: row for row in sweep_summary.collect(FLAGS.workdir)}
  return ([(run, rows.get(name)) for run, name in chosen],
          'failed' in statuses.values())


@functools.lru_cache(maxsize=None)
def paper_costs(name: str, alpha: float = 1.0, rho: float = 1.0,
                expansion: float | None = None) -> costs.Profile:
  """Our model's costs at the papers' setting: round(rho * 224) px, 1000
  classes."""
  model = models.create_model(name, alpha=alpha, expansion=expansion)
  return costs.profile_model(model, models.input_resolution(rho, 224))


def millions(value: float | None, fmt: str = '.1f') -> str:
  return '' if value is None else format(value / 1e6, fmt)


def command_line(module: str) -> str:
  return shlex.join(['python', '-m', module, *sys.argv[1:]])


def trained_on() -> str:
  """'shapes, 300 steps, base 64 px (configs/default.py)' for the report."""
  config = FLAGS.config
  steps = FLAGS.steps or config.num_train_steps or (
      f'{config.num_epochs:g} epochs')
  return (f'{config.data.dataset}, {steps} steps, base '
          f'{config.data.base_resolution} px '
          f'({config_flags.get_config_filename(FLAGS["config"])})')


def percent(row: sweep_summary.Row | None, field: str = 'top1') -> str:
  value = None if row is None else getattr(row, field)
  return '' if value is None else f'{100 * value:.1f}'


def write_report(text: str) -> None:
  path = epath.Path(FLAGS.output)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(text, end='')
  print(f'written to {path}')


# Why short offline runs rank models as they do (configs/default.py).
SHAPES_NOTE = (
    'On `shapes` every model sits at chance for its first 100-200 steps '
    'before it finds the shapes; in runs this short, accuracy mostly '
    'measures how soon a model leaves that plateau (the default run, V1 '
    'alpha 0.5 for 1000 steps, reaches 95-98%). Longer runs: --steps=N.')


def report(title: str, module: str, notes: Sequence[str],
           tables: Sequence[tuple[str, str]]) -> str:
  """A markdown report: title, the command, notes (with SHAPES_NOTE when the
  runs trained on `shapes`), then titled tables."""
  if FLAGS.config.data.dataset == 'shapes':
    notes = [*notes, SHAPES_NOTE]
  parts = [f'# {title}\n', f'Command: `{command_line(module)}`\n',
           *(f'{note}\n' for note in notes)]
  for heading, table in tables:
    parts += [f'## {heading}\n', table]
  return '\n'.join(parts)
