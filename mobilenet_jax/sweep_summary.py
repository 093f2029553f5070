"""Summarising a sweep directory (`sweep_runs`): a results table and a plot.

`summarize(DIR)` writes DIR/results.csv, DIR/results.md and DIR/tradeoff.png
(top-1 against multiply-adds, as the V1 paper's figure 4, for our runs) and,
when runs were exported (`sweep run --export`), DIR/tradeoff_latency.png
(each export's top-1 against its measured LiteRT latency, as the V3 paper's
figures) and the exports' top-1 and latency columns. results.csv's last
column is each run's code hash (`provenance`); runs of one sweep from
different code give a one-line warning. It works on a partly
finished sweep and on gs:// directories, and reads only what the runs wrote
(no dataset, no TensorFlow).
"""

import csv
import dataclasses
import io
import math
import os
import statistics
import sys
from typing import Sequence

from etils import epath
import ml_collections

from mobilenet_jax import checkpoint
from mobilenet_jax import config_check
from mobilenet_jax import costs
from mobilenet_jax import hyper
from mobilenet_jax import models
from mobilenet_jax import provenance
from mobilenet_jax import state as state_lib
from mobilenet_jax import sweep_runs


@dataclasses.dataclass
class Row:
  """One run of a sweep directory, as `summarize` reports it. Costs are for
  the run's model at its input resolution (None where unknown); accuracies
  are the final evaluation's (None before it)."""
  name: str
  overrides: hyper.Run
  status: str
  resolution: int | None = None
  params: int | None = None
  macs: int | None = None
  top1: float | None = None
  top5: float | None = None
  steps: int | None = None
  img_per_sec: float | None = None
  dataset: str | None = None
  # {'float' / 'int8': sweep_runs.export_result_path's record}
  exports: dict = dataclasses.field(default_factory=dict)
  code_hash: str | None = None  # of the code its latest start ran


def _train_metrics(run_dir: epath.Path) -> list[dict]:
  """The train lines of metrics.jsonl (a half-written last line is skipped)."""
  return [record for record in sweep_runs.metrics_records(run_dir)
          if record.get('split') == 'train']


def _resolution(config: ml_collections.ConfigDict) -> int | None:
  try:
    return models.input_resolution(config.data.rho,
                                   config.data.base_resolution)
  except ValueError:
    return None


def _model_costs(config: ml_collections.ConfigDict,
                 resolution: int) -> tuple[int, int] | None:
  """(params, MACs) of a run's model, with the classes its resolved config
  records; None if the model is invalid or the config records no classes."""
  if 'num_classes' not in config:
    return None
  try:
    profile = costs.profile_model(
        state_lib.model_from_config(config.model, config.num_classes),
        resolution)
  except ValueError:
    return None
  return profile.params, profile.macs


def collect(workdir: str) -> list[Row]:
  """One `Row` per run directory (holding run.json) of a sweep directory, in
  sweep order. Params and MACs are filled in once training has started
  (its resolved config.json records the dataset's classes)."""
  if not epath.Path(workdir).is_dir():
    raise config_check.ConfigError(f'sweep directory not found: {workdir!r}')
  records = []
  for run_dir in epath.Path(workdir).iterdir():
    record = sweep_runs.read_json(run_dir / sweep_runs.RUN_FILE)
    if record is not None:
      records.append((record, run_dir))
  records.sort(key=lambda item: (item[0]['index'], item[0]['name']))
  return [_row(record, run_dir) for record, run_dir in records]


def _row(record: dict, run_dir: epath.Path) -> Row:
  """A run's row from its run.json, config, metrics and final evaluation."""
  row = Row(record['name'], record['overrides'], 'pending')
  started = (run_dir / checkpoint.CONFIG_FILE).exists()
  if started:
    config = checkpoint.load_config(os.fspath(run_dir))
  elif record['config'] is not None:
    config = ml_collections.ConfigDict(record['config'])
  else:
    config = None
  if config is not None:
    row.resolution = _resolution(config)
    row.dataset = config.data.dataset
  if started and row.resolution is not None:
    row.params, row.macs = (_model_costs(config, row.resolution)
                            or (None, None))
  ran = sweep_runs.read_json(run_dir / provenance.PROVENANCE_FILE)
  row.code_hash = ran['code_hash'] if ran else None
  state = sweep_runs.run_state(run_dir, record)
  row.status, row.top1, row.top5 = state.status, state.top1, state.top5
  if state.status == 'finished':
    row.exports = sweep_runs.export_results(run_dir)
  train = _train_metrics(run_dir)
  if train:
    row.steps = train[-1]['step']
    timed = [r['img_per_sec'] for r in train if 'img_per_sec' in r]
    row.img_per_sec = statistics.median(timed) if timed else None
  return row


_COLUMNS = ('resolution', 'params', 'macs', 'top1', 'top5', 'steps',
            'img_per_sec', 'status')


def _blank(value, fmt: str) -> str:
  return '' if value is None else format(value, fmt)


def export_kinds(rows: Sequence[Row]) -> list[str]:
  """The export kinds ('float', 'int8') some row has a result for."""
  return [kind for kind in sweep_runs.EXPORT_QUANTIZE
          if any(kind in row.exports for row in rows)]


def _export_value(row: Row, kind: str, field: str):
  return row.exports.get(kind, {}).get(field)


def results_csv(rows: Sequence[Row], keys: Sequence[str]) -> str:
  """One line per run; with exports, <kind>_top1 and <kind>_latency_ms
  columns (kind: float, int8) before the status; the code hash last."""
  kinds = export_kinds(rows)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['run', *keys, *_COLUMNS[:-1],
                   *(f'{kind}_{field}' for kind in kinds
                     for field in ('top1', 'latency_ms')), _COLUMNS[-1],
                   'code_hash'])
  for row in rows:
    values = [getattr(row, c) for c in _COLUMNS[:-1]]
    values += [_export_value(row, kind, field) for kind in kinds
               for field in ('top1', 'latency_ms')]
    writer.writerow([row.name, *(row.overrides.get(k, '') for k in keys),
                     *('' if v is None else v for v in values), row.status,
                     row.code_hash or ''])
  return out.getvalue()


def markdown_table(header: Sequence[str],
                   rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def results_markdown(rows: Sequence[Row], keys: Sequence[str]) -> str:
  kinds = export_kinds(rows)
  header = ['run', *keys, 'resolution', 'params (M)', 'MACs (M)',
            'top-1 (%)', 'top-5 (%)', 'steps', 'img/s',
            *(f'{kind} {column}' for kind in kinds
              for column in ('top-1 (%)', 'ms')), 'status']
  return markdown_table(header, [
      [row.name, *(sweep_runs.format_value(row.overrides[k])
                   if k in row.overrides else '' for k in keys),
       _blank(row.resolution, 'd'),
       _blank(row.params and row.params / 1e6, '.2f'),
       _blank(row.macs and row.macs / 1e6, '.1f'),
       _blank(row.top1 and 100 * row.top1, '.1f'),
       _blank(row.top5 and 100 * row.top5, '.1f'),
       _blank(row.steps, 'd'), _blank(row.img_per_sec, '.0f'),
       *(cell for kind in kinds for cell in (
           _blank(_percent(_export_value(row, kind, 'top1')), '.1f'),
           _blank(_export_value(row, kind, 'latency_ms'), '.2f'))),
       row.status]
      for row in rows])


def _percent(value: float | None) -> float | None:
  return None if value is None else 100 * value


def tradeoff_series(rows: Sequence[Row], keys: Sequence[str],
                    export: str | None = None) -> dict[str, list[Row]]:
  """Finished runs grouped by every swept key but the fastest varying (the
  last): {'alpha=0.5': [runs over rho], ...}, each sorted by MACs; with
  `export` ('float', 'int8'), the runs with that export's result, sorted by
  its latency."""
  series = {}
  for row in rows:
    if export is None and (row.top1 is None or row.macs is None):
      continue
    if export is not None and export not in row.exports:
      continue
    label = ', '.join(
        f'{k.rsplit(".", 1)[-1]}={sweep_runs.format_value(row.overrides[k])}'
        for k in keys[:-1] if k in row.overrides) or 'runs'
    series.setdefault(label, []).append(row)
  if export is None:
    key = lambda row: row.macs
  else:
    key = lambda row: row.exports[export]['latency_ms']
  return {label: sorted(group, key=key) for label, group in series.items()}


def _plot(lines: dict[str, list[tuple[float, float, str]]], xlabel: str,
          title: str, empty: str) -> bytes:
  """A PNG: one line per label through its (x, top-1 %, annotation)
  points, x on a log scale."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(7, 5))
  for label, points in lines.items():
    xs, ys, notes = zip(*points)
    axes.plot(xs, ys, marker='o', label=label)
    for x, y, note in zip(xs, ys, notes):
      if note:
        axes.annotate(note, (x, y), textcoords='offset points', xytext=(4, 4),
                      fontsize=8)
  if not axes.lines:
    axes.text(0.5, 0.5, empty, ha='center', va='center',
              transform=axes.transAxes)
  else:
    axes.set_xscale('log')
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(_plain))
    axes.xaxis.set_minor_formatter(ticker.FuncFormatter(_plain_2_and_5))
    axes.legend(fontsize=8)
  axes.set_xlabel(xlabel)
  axes.set_ylabel('top-1 (%)')
  axes.set_title(title)
  axes.grid(True, which='both', alpha=0.3)
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=120, bbox_inches='tight')
  plt.close(figure)
  return buffer.getvalue()


def _plain(x: float, _=None) -> str:
  """A log axis' tick label as a plain number ('200', '0.5'), not
  matplotlib's '2x10^2'."""
  return f'{x:g}'


def _plain_2_and_5(x: float, _=None) -> str:
  """Labels the minor ticks at 2 and 5 times a power of ten (enough to read
  an axis that spans less than a decade), others blank."""
  mantissa = round(x / 10**math.floor(math.log10(x)), 6) if x > 0 else 0
  return _plain(x) if mantissa in (2, 5) else ''


def _note(row: Row, fastest: str | None) -> str:
  if fastest in row.overrides:
    return sweep_runs.format_value(row.overrides[fastest])
  return ''


def _title(title: str, keys: Sequence[str]) -> str:
  return (title if not keys else
          f'{title} (points: {keys[-1].rsplit(".", 1)[-1]})')


def plot_title(sweep: str, rows: Sequence[Row]) -> str:
  """'SWEEP: DATASET, N steps': what a plot compares, on what; datasets and
  step counts that differ between runs are listed ('100-300 steps')."""
  datasets = sorted({row.dataset for row in rows if row.dataset})
  steps = sorted({row.steps for row in rows if row.steps is not None})
  parts = [', '.join(datasets) or 'no dataset yet']
  if steps:
    parts.append(f'{steps[0]} steps' if len(steps) == 1 else
                 f'{steps[0]}-{steps[-1]} steps')
  return f'{sweep}: {", ".join(parts)}'


def written_files(rows: Sequence[Row]) -> list[str]:
  """The files `summarize` writes for `rows`, in its sweep directory."""
  return ['results.csv', 'results.md', 'tradeoff.png',
          *(['tradeoff_latency.png'] if export_kinds(rows) else [])]


def tradeoff_png(rows: Sequence[Row], keys: Sequence[str], title: str) -> bytes:
  """Top-1 against MACs (log scale), one line per series, each point
  labelled with its fastest-varying value."""
  fastest = keys[-1] if keys else None
  lines = {label: [(row.macs / 1e6, 100 * row.top1, _note(row, fastest))
                   for row in group]
           for label, group in tradeoff_series(rows, keys).items()}
  return _plot(lines, 'multiply-adds (millions, log scale)',
               _title(title, keys), 'no finished runs yet')


def latency_png(rows: Sequence[Row], keys: Sequence[str], title: str) -> bytes:
  """Each export's top-1 against its LiteRT latency (1 thread, batch 1; log
  scale): one line per export kind and series, as the V3 paper's figures."""
  fastest = keys[-1] if keys else None
  lines = {}
  for kind in export_kinds(rows):
    for label, group in tradeoff_series(rows, keys, export=kind).items():
      lines[f'{kind}: {label}' if label != 'runs' else kind] = [
          (row.exports[kind]['latency_ms'], 100 * row.exports[kind]['top1'],
           _note(row, fastest)) for row in group]
  return _plot(lines, 'latency (ms, LiteRT, 1 thread, log scale)',
               _title(title, keys), 'no exported runs yet')


def summarize(workdir: str) -> list[Row]:
  """Writes DIR/results.csv, DIR/results.md, DIR/tradeoff.png and, when
  some run has an export's result, DIR/tradeoff_latency.png; returns the
  rows."""
  rows = collect(workdir)
  if not rows:
    raise config_check.ConfigError(
        f'no runs (subdirectories with {sweep_runs.RUN_FILE}) '
        f'in {workdir!r}')
  keys = sweep_runs.swept_keys([row.overrides for row in rows])
  path = epath.Path(workdir)
  (path / 'results.csv').write_text(results_csv(rows, keys))
  hashes = {row.code_hash for row in rows if row.code_hash}
  if len(hashes) > 1:
    print(f'warning: the runs of {workdir} ran {len(hashes)} different code '
          'trees (code_hash column of results.csv)', file=sys.stderr)
  (path / 'results.md').write_text(results_markdown(rows, keys))
  title = plot_title(os.path.basename(workdir.rstrip('/')), rows)
  (path / 'tradeoff.png').write_bytes(tradeoff_png(rows, keys, title))
  if export_kinds(rows):
    (path / 'tradeoff_latency.png').write_bytes(latency_png(rows, keys, title))
  return rows


