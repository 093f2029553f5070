r"""Sweeps: expand a sweep file into runs, launch them, summarize the results.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v1_width_resolution.py --workdir=runs/v1_grid \
      [--launcher=local|tpu_vm] [--tpu=NAME --zone=ZONE] [--dry_run] \
      [--config.num_train_steps=300 ...]
  python -m mobilenet_jax.sweep summarize runs/v1_grid

A sweep file defines `get_sweep(h)` (h is `mobilenet_jax.hyper`) returning a
list of override dicts, and may set `TPU = ...` and `ZONE = ...` defaults for
the tpu_vm launcher. `--config.KEY=VALUE` flags apply to every run. Each run
trains with `python -m mobilenet_jax.main` in its own workdir DIR/<run>,
named from the values the sweep varies (`alpha_0.5-rho_0.857`), holding
besides training's own files:

  run.json   the run's overrides, command, config and status (pending,
             running, finished, failed), written before it starts
  log.txt    its output (appended on every attempt)
  error.txt  the last lines of its output, when it failed

Re-running the same command skips finished runs (those with the final
eval/step_<N>.json) and resumes the others from their checkpoints; a failed
run does not stop the others, and the exit status is 1 if any failed.
`summarize` writes DIR/results.csv, DIR/results.md and DIR/tradeoff.png
(top-1 against multiply-adds, as the V1 paper's figure 4, for our runs);
it works on a partly finished sweep and on gs:// directories.
"""

import collections
import csv
import dataclasses
import importlib.util
import io
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags

from mobilenet_jax import checkpoint
from mobilenet_jax import costs
from mobilenet_jax import data
from mobilenet_jax import hyper
from mobilenet_jax import models
from mobilenet_jax import state as state_lib

RUN_FILE = 'run.json'
LOG_FILE = 'log.txt'
ERROR_FILE = 'error.txt'
LAUNCHERS = ('local', 'tpu_vm')
STATUSES = ('finished', 'running', 'failed', 'pending')
TPU_REPO_DIR = '~/mobilenet_jax'  # where the repository is on the TPU VM
ERROR_TAIL_LINES = 40
_SAFE_CHARS = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
                        '0123456789._+-')


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file's runs and its tpu_vm defaults."""
  runs: list[hyper.Run]
  tpu: str | None = None
  zone: str | None = None


def load_sweep(path: str) -> Sweep:
  """Runs `get_sweep(hyper)` of the sweep file at `path`."""
  if not os.path.isfile(path):
    raise ValueError(f'sweep file not found: {path!r}')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'sweep file {path!r} must define get_sweep(h)')
  runs = module.get_sweep(hyper)
  if not (isinstance(runs, list) and runs and
          all(isinstance(run, dict) for run in runs)):
    raise ValueError(f'get_sweep of {path!r} must return a non-empty list of '
                     'override dicts')
  return Sweep(runs, getattr(module, 'TPU', None),
               getattr(module, 'ZONE', None))


# Naming.


def swept_keys(runs: Sequence[hyper.Run]) -> list[str]:
  """The keys whose value is not the same in every run, in sweep order."""
  keys = list(dict.fromkeys(key for run in runs for key in run))
  missing = object()
  return [key for key in keys
          if any(run.get(key, missing) != runs[0].get(key, missing)
                 for run in runs)]


def format_value(value: Any) -> str:
  """A value as written on the command line: bools as true/false."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  return str(value)


def run_name(run: hyper.Run, keys: Sequence[str]) -> str:
  """'alpha_0.5-rho_0.857' for keys ['model.alpha', 'data.rho']: each key's
  last component (the full path where two keys share it) and value;
  characters outside [A-Za-z0-9._+-] become '_'."""
  parts = []
  for key in keys:
    if key not in run:
      continue
    leaf = key.rsplit('.', 1)[-1]
    if sum(k.rsplit('.', 1)[-1] == leaf for k in keys) > 1:
      leaf = key
    parts.append(f'{leaf}_{format_value(run[key])}')
  name = '-'.join(parts) or 'run'
  return ''.join(c if c in _SAFE_CHARS else '_' for c in name)


def run_names(runs: Sequence[hyper.Run]) -> list[str]:
  """One distinct name per run, from the swept keys (all keys for a single
  run)."""
  keys = swept_keys(runs) if len(runs) > 1 else list(runs[0])
  names = [run_name(run, keys) for run in runs]
  seen = {}
  for i, name in enumerate(names):
    if name in seen:
      raise ValueError(f'runs {seen[name]} and {i} of the sweep are both named '
                       f'{name!r}: a sweep must not list a run twice')
    seen[name] = i
  return names


# Commands.


def config_overrides_from_argv(argv: Sequence[str]) -> list[str]:
  """The `--config.KEY=VALUE` arguments of a command line, in order."""
  overrides = [arg for arg in argv if arg.startswith('--config.')]
  for arg in overrides:
    if '=' not in arg:
      raise ValueError(f'write config overrides as --config.KEY=VALUE, got '
                       f'{arg!r}')
  return overrides


def override_flags(run: hyper.Run) -> list[str]:
  return [f'--config.{key}={format_value(value)}' for key, value in run.items()]


def train_command(python: str, config_arg: str, workdir: str,
                  config_overrides: Sequence[str]) -> list[str]:
  return [python, '-m', 'mobilenet_jax.main', f'--config={config_arg}',
          f'--workdir={workdir}', *config_overrides]


def launch_command(launcher: str, config_arg: str, workdir: str,
                   config_overrides: Sequence[str], tpu: str | None = None,
                   zone: str | None = None) -> list[str]:
  """The argv that trains one run: on this machine (`local`) or on every
  worker of a TPU VM (`tpu_vm`)."""
  if launcher == 'local':
    return train_command(sys.executable, config_arg, workdir, config_overrides)
  remote = shlex.join(
      train_command('python3', config_arg, workdir, config_overrides))
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu, f'--zone={zone}',
          '--worker=all', f'--command=cd {TPU_REPO_DIR} && {remote}']


def format_command(command: Sequence[str]) -> str:
  """Shell text for `command`, quoting only the value of `--flag=value`
  arguments (`--command='cd ... && python3 ...'`)."""
  words = []
  for arg in command:
    flag, sep, value = arg.partition('=')
    if arg.startswith('--') and sep and shlex.quote(flag) == flag:
      words.append(f'{flag}={shlex.quote(value)}')
    else:
      words.append(shlex.quote(arg))
  return ' '.join(words)


def apply_overrides(config: ml_collections.ConfigDict,
                    run: hyper.Run) -> ml_collections.ConfigDict:
  """A copy of `config` with the run's values set; a key the config lacks is
  an error, as on the command line."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in run.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node.get(part)
      if not isinstance(node, ml_collections.ConfigDict):
        break
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ValueError(f'config has no field {key!r}')
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f'config field {key}: {e}') from None
  return config


# Run directories.


def _read_json(path: epath.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: epath.Path, record: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=2) + '\n')


def final_eval_path(run_dir: epath.Path) -> epath.Path | None:
  """eval/step_<num_train_steps>.json of a run whose training started (its
  config.json exists); None before."""
  config_path = run_dir / checkpoint.CONFIG_FILE
  if not config_path.exists():
    return None
  num_train_steps = json.loads(config_path.read_text())['num_train_steps']
  return run_dir / 'eval' / f'step_{num_train_steps}.json'


def is_finished(run_dir: epath.Path) -> bool:
  path = final_eval_path(run_dir)
  return path is not None and path.exists()


def _duration(seconds: float) -> str:
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


def _execute(command: Sequence[str], log_path: epath.Path) -> tuple[int, str]:
  """Runs `command`, appending its output to `log_path`; returns the exit
  status and the output's last lines."""
  tail = collections.deque(maxlen=ERROR_TAIL_LINES)
  streaming = not str(log_path).startswith('gs://')  # GCS uploads per flush
  with log_path.open('a') as log:
    log.write(f'$ {format_command(command)}\n')
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               errors='replace')
    for line in process.stdout:
      log.write(line)
      if streaming:
        log.flush()
      tail.append(line)
    returncode = process.wait()
  return returncode, ''.join(tail)


def _check_launcher(launcher: str, workdir: str, tpu: str | None,
                    zone: str | None) -> None:
  if launcher not in LAUNCHERS:
    raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
  if launcher == 'tpu_vm':
    if not workdir.startswith('gs://'):
      raise ValueError(f'launcher tpu_vm needs a gs:// workdir that the TPU '
                       f'VM can write, got {workdir!r}')
    if not (tpu and zone):
      raise ValueError('launcher tpu_vm needs --tpu and --zone (or TPU and '
                       'ZONE in the sweep file)')


def run_sweep(runs: Sequence[hyper.Run], *, config: ml_collections.ConfigDict,
              config_arg: str, workdir: str, launcher: str = 'local',
              tpu: str | None = None, zone: str | None = None,
              config_overrides: Sequence[str] = (), dry_run: bool = False,
              names: Sequence[str] | None = None) -> dict[str, str]:
  """Trains every run of a sweep, one after another.

  Args:
    runs: override dicts, e.g. from `load_sweep`.
    config: the base config, `config_overrides` already applied (as
      `--config` parses it); recorded per run for `summarize`.
    config_arg: the `--config` argument the runs train with, e.g.
      'configs/imagenet_mobilenet_v1.py:alpha=0.5'.
    workdir: the sweep directory (gs:// for tpu_vm).
    launcher: 'local' or 'tpu_vm'.
    tpu, zone: the TPU VM, for tpu_vm.
    config_overrides: `--config.KEY=VALUE` arguments for every run; they may
      not set a key the sweep sets.
    dry_run: print each run's command and run nothing.
    names: the runs' directory names; default `run_names(runs)` (a subset of
      a sweep keeps the whole sweep's names by passing them).

  Returns:
    {run name: 'finished' or 'failed'} ('pending' for every run on a dry run).
  """
  _check_launcher(launcher, workdir, tpu, zone)
  names = run_names(runs) if names is None else list(names)
  if len(set(names)) != len(runs):
    raise ValueError(f'need one distinct name per run, got {names}')
  swept = {key for run in runs for key in run}
  for arg in config_overrides:
    key = arg[len('--config.'):].partition('=')[0]
    if key in swept:
      raise ValueError(f'{key} is set by the sweep; drop --config.{key} from '
                       'the command line')
  commands = {
      name: launch_command(launcher, config_arg,
                           f"{workdir.rstrip('/')}/{name}",
                           [*config_overrides, *override_flags(run)], tpu, zone)
      for name, run in zip(names, runs)}
  if dry_run:
    for name in names:
      print(format_command(commands[name]), flush=True)
    return dict.fromkeys(names, 'pending')
  if launcher == 'tpu_vm' and shutil.which('gcloud') is None:
    raise ValueError('launcher tpu_vm needs the gcloud CLI on PATH')

  records = [_prepare(index, name, run, config, config_arg, config_overrides,
                      format_command(commands[name]), epath.Path(workdir))
             for index, (name, run) in enumerate(zip(names, runs))]
  statuses = {}
  for i, record in enumerate(records, 1):
    name = record['name']
    progress = (f'[{i}/{len(names)}] {name}: %s  '
                f'({list(statuses.values()).count("finished")} finished, '
                f'{list(statuses.values()).count("failed")} failed, '
                f'{len(names) - i + 1} left)')
    if record['status'] == 'finished':
      print(progress % 'finished before, skipped', flush=True)
    else:
      run_dir = epath.Path(workdir) / name
      print(progress % f'running, log in {run_dir / LOG_FILE}', flush=True)
      record = _launch(record, commands[name], run_dir)
      print(f'[{i}/{len(names)}] {name}: {record["status"]} after '
            f'{_duration(record["seconds"])}', flush=True)
      if record['status'] == 'failed':
        print(f'  {record["error"]}\n  see {run_dir / ERROR_FILE}', flush=True)
    statuses[name] = record['status']

  failed = [name for name, status in statuses.items() if status == 'failed']
  print(f'sweep: {len(names) - len(failed)} finished, {len(failed)} failed '
        f'({", ".join(failed) or "none"}); summary: python -m '
        f'mobilenet_jax.sweep summarize {workdir}', flush=True)
  return statuses


def _prepare(index: int, name: str, run: hyper.Run,
             config: ml_collections.ConfigDict, config_arg: str,
             config_overrides: Sequence[str], command: str,
             workdir: epath.Path) -> dict:
  """Writes (and returns) a run's run.json before the sweep starts: status
  'finished' or 'pending', and its config, or the error applying its
  overrides. A run directory launched with other settings is an error."""
  run_dir = workdir / name
  launched_as = dict(overrides=run, config_arg=config_arg,
                     config_overrides=list(config_overrides))
  old = _read_json(run_dir / RUN_FILE)
  if old is not None and {k: old.get(k) for k in launched_as} != launched_as:
    raise ValueError(
        f'{run_dir} was launched with other settings ({old.get("config_arg")} '
        f'{old.get("config_overrides")} {old.get("overrides")}); use a new '
        '--workdir')
  try:
    run_config = json.loads(apply_overrides(config, run).to_json_best_effort())
    error = None
  except ValueError as e:
    run_config, error = None, str(e)
  record = dict(index=index, name=name, **launched_as, command=command,
                config=run_config, error=error,
                status='finished' if is_finished(run_dir) else 'pending')
  _write_json(run_dir / RUN_FILE, record)
  return record


def _launch(record: dict, command: Sequence[str], run_dir: epath.Path) -> dict:
  """Trains one run (unless its overrides did not apply); records the
  outcome in run.json, and the output's last lines in error.txt on failure."""
  start = time.time()
  if record['error'] is None:
    _write_json(run_dir / RUN_FILE, {**record, 'status': 'running'})
    returncode, tail = _execute(command, run_dir / LOG_FILE)
    if returncode == 0 and not is_finished(run_dir):
      tail += 'exited without the final evaluation (preempted?)\n'
  else:
    returncode, tail = None, record['error'] + '\n'
  finished = returncode == 0 and is_finished(run_dir)
  lines = tail.strip().splitlines()
  record = {**record, 'status': 'finished' if finished else 'failed',
            'returncode': returncode, 'seconds': round(time.time() - start, 1),
            'error': None if finished else (lines[-1] if lines else '')}
  if finished:
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier attempt
  else:
    (run_dir / ERROR_FILE).write_text(tail)
  _write_json(run_dir / RUN_FILE, record)
  return record


# Summary.


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


def _train_metrics(run_dir: epath.Path) -> list[dict]:
  """The train lines of metrics.jsonl (a half-written last line is skipped)."""
  path = run_dir / 'metrics.jsonl'
  if not path.exists():
    return []
  lines = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get('split') == 'train':
      lines.append(record)
  return lines


def _resolution(config: ml_collections.ConfigDict) -> int | None:
  try:
    return models.input_resolution(config.data.rho,
                                   config.data.base_resolution)
  except ValueError:
    return None


def _model_costs(config: ml_collections.ConfigDict, resolution: int,
                 num_classes: dict[str, int]) -> tuple[int, int] | None:
  """(params, MACs) of a run's model, with its dataset's classes (cached in
  `num_classes` per data config); None if the model or data is invalid."""
  key = config.data.to_json_best_effort()
  try:
    if key not in num_classes:
      num_classes[key] = data.get_dataset_info(config.data).num_classes
    profile = costs.profile_model(
        state_lib.model_from_config(config.model, num_classes[key]),
        resolution)
  except (ValueError, OSError):
    return None
  return profile.params, profile.macs


def collect(workdir: str) -> list[Row]:
  """One `Row` per run directory (holding run.json) of a sweep directory, in
  sweep order. Params and MACs are filled in once training has started (so
  that reading the dataset's classes never prepares a dataset)."""
  if not epath.Path(workdir).is_dir():
    raise ValueError(f'sweep directory not found: {workdir!r}')
  records = []
  for run_dir in epath.Path(workdir).iterdir():
    record = _read_json(run_dir / RUN_FILE)
    if record is not None:
      records.append((record, run_dir))
  records.sort(key=lambda item: (item[0]['index'], item[0]['name']))
  num_classes = {}
  return [_row(record, run_dir, num_classes) for record, run_dir in records]


def _row(record: dict, run_dir: epath.Path, num_classes: dict[str, int]) -> Row:
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
  if started and row.resolution is not None:
    row.params, row.macs = (_model_costs(config, row.resolution, num_classes)
                            or (None, None))
  final = final_eval_path(run_dir)
  if final is not None and final.exists():
    result = json.loads(final.read_text())
    row.status = 'finished'
    row.top1, row.top5 = result['top1'], result['top5']
  elif record['status'] == 'failed':
    row.status = 'failed'
  elif (record['status'] == 'running' or
        (run_dir / checkpoint.CHECKPOINT_SUBDIR).exists()):
    row.status = 'running'
  train = _train_metrics(run_dir)
  if train:
    row.steps = train[-1]['step']
    row.img_per_sec = statistics.median(r['img_per_sec'] for r in train)
  return row


_COLUMNS = ('resolution', 'params', 'macs', 'top1', 'top5', 'steps',
            'img_per_sec', 'status')


def _blank(value, fmt: str) -> str:
  return '' if value is None else format(value, fmt)


def results_csv(rows: Sequence[Row], keys: Sequence[str]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['run', *keys, *_COLUMNS])
  for row in rows:
    writer.writerow([row.name, *(row.overrides.get(k, '') for k in keys),
                     *('' if getattr(row, c) is None else getattr(row, c)
                       for c in _COLUMNS)])
  return out.getvalue()


def markdown_table(header: Sequence[str],
                   rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def results_markdown(rows: Sequence[Row], keys: Sequence[str]) -> str:
  header = ['run', *keys, 'resolution', 'params (M)', 'MACs (M)',
            'top-1 (%)', 'top-5 (%)', 'steps', 'img/s', 'status']
  return markdown_table(header, [
      [row.name, *(format_value(row.overrides[k]) if k in row.overrides
                   else '' for k in keys),
       _blank(row.resolution, 'd'),
       _blank(row.params and row.params / 1e6, '.2f'),
       _blank(row.macs and row.macs / 1e6, '.1f'),
       _blank(row.top1 and 100 * row.top1, '.1f'),
       _blank(row.top5 and 100 * row.top5, '.1f'),
       _blank(row.steps, 'd'), _blank(row.img_per_sec, '.0f'), row.status]
      for row in rows])


def tradeoff_series(rows: Sequence[Row],
                    keys: Sequence[str]) -> dict[str, list[Row]]:
  """Finished runs grouped by every swept key but the fastest varying (the
  last): {'alpha=0.5': [runs over rho], ...}, each sorted by MACs."""
  series = {}
  for row in rows:
    if row.top1 is None or row.macs is None:
      continue
    label = ', '.join(f'{k.rsplit(".", 1)[-1]}={format_value(row.overrides[k])}'
                      for k in keys[:-1] if k in row.overrides) or 'runs'
    series.setdefault(label, []).append(row)
  return {label: sorted(group, key=lambda row: row.macs)
          for label, group in series.items()}


def tradeoff_png(rows: Sequence[Row], keys: Sequence[str], title: str) -> bytes:
  """Top-1 against MACs (log scale), one line per series, each point
  labelled with its fastest-varying value."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(7, 5))
  fastest = keys[-1] if keys else None
  for label, group in tradeoff_series(rows, keys).items():
    macs = [row.macs / 1e6 for row in group]
    top1 = [100 * row.top1 for row in group]
    axes.plot(macs, top1, marker='o', label=label)
    for row, x, y in zip(group, macs, top1):
      if fastest in row.overrides:
        axes.annotate(format_value(row.overrides[fastest]), (x, y),
                      textcoords='offset points', xytext=(4, 4), fontsize=8)
  if not axes.lines:
    axes.text(0.5, 0.5, 'no finished runs yet', ha='center', va='center',
              transform=axes.transAxes)
  else:
    axes.set_xscale('log')
    axes.legend(fontsize=8)
  axes.set_xlabel('multiply-adds (millions, log scale)')
  axes.set_ylabel('top-1 (%)')
  axes.set_title(title if fastest is None else
                 f'{title} (points: {fastest.rsplit(".", 1)[-1]})')
  axes.grid(True, which='both', alpha=0.3)
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=120, bbox_inches='tight')
  plt.close(figure)
  return buffer.getvalue()


def summarize(workdir: str) -> list[Row]:
  """Writes DIR/results.csv, DIR/results.md and DIR/tradeoff.png; returns
  the rows."""
  rows = collect(workdir)
  if not rows:
    raise ValueError(f'no runs (subdirectories with {RUN_FILE}) in {workdir!r}')
  keys = swept_keys([row.overrides for row in rows])
  path = epath.Path(workdir)
  (path / 'results.csv').write_text(results_csv(rows, keys))
  (path / 'results.md').write_text(results_markdown(rows, keys))
  (path / 'tradeoff.png').write_bytes(
      tradeoff_png(rows, keys, os.path.basename(workdir.rstrip('/'))))
  return rows


# Command line.


def define_flags(config: str | None = None, workdir: str | None = None):
  """The flags that launch a sweep (`run`, and the experiments with their
  own defaults): --config, --workdir, --launcher, --tpu, --zone, --dry_run."""
  config_flags.DEFINE_config_file(
      'config', config, 'The base training config, as for mobilenet_jax.main.',
      lock_config=True)
  flags.DEFINE_string('workdir', workdir, 'The sweep directory (local or '
                      'gs://); each run trains in a subdirectory.')
  flags.DEFINE_enum('launcher', 'local', LAUNCHERS, 'local (one after another '
                    'on this machine) or tpu_vm (gcloud ssh to every worker '
                    'of a TPU VM).')
  flags.DEFINE_string('tpu', None, 'tpu_vm: the TPU VM name (default: the '
                      'sweep file\'s TPU).')
  flags.DEFINE_string('zone', None, 'tpu_vm: its zone (default: the sweep '
                      'file\'s ZONE).')
  flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')


def run_from_flags(runs: Sequence[hyper.Run], *, tpu: str | None = None,
                   zone: str | None = None,
                   names: Sequence[str] | None = None) -> dict[str, str]:
  """`run_sweep` with the settings of `define_flags`' flags (`tpu` and `zone`
  are the defaults for --tpu and --zone) and the command line's
  --config.KEY=VALUE arguments."""
  values = flags.FLAGS
  if values.config is None or not values.workdir:
    raise app.UsageError('give --config and --workdir')
  return run_sweep(
      runs, names=names, config=values.config,
      config_arg=config_flags.get_config_filename(values['config']),
      workdir=values.workdir, launcher=values.launcher,
      tpu=values.tpu or tpu, zone=values.zone or zone,
      config_overrides=config_overrides_from_argv(sys.argv),
      dry_run=values.dry_run)


_USAGE = ('usage: python -m mobilenet_jax.sweep run --config=FILE --sweep=FILE '
          '--workdir=DIR [...]  |  python -m mobilenet_jax.sweep summarize DIR')


def main(argv):
  if len(argv) < 2 or argv[1] not in ('run', 'summarize'):
    raise app.UsageError(_USAGE)
  if argv[1] == 'summarize':
    if len(argv) != 3:
      raise app.UsageError(_USAGE)
    try:
      summarize(argv[2])
    except ValueError as e:
      sys.exit(f'error: {e}')
    print((epath.Path(argv[2]) / 'results.md').read_text(), end='')
    return
  if len(argv) != 2:
    raise app.UsageError(f'unexpected arguments: {argv[2:]}')
  if not flags.FLAGS.sweep:
    raise app.UsageError('run needs --sweep')
  try:
    sweep = load_sweep(flags.FLAGS.sweep)
    statuses = run_from_flags(sweep.runs, tpu=sweep.tpu, zone=sweep.zone)
  except ValueError as e:
    sys.exit(f'error: {e}')
  if 'failed' in statuses.values():
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  flags.DEFINE_string('sweep', None, 'A sweep file (configs/sweeps/*.py).')
  app.run(main)
