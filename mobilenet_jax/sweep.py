r"""Sweeps: expand a sweep file into runs, launch them, summarize the results.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v1_width_resolution.py --workdir=runs/v1_grid \
      [--launcher=local|tpu_vm] [--tpu=NAME --zone=ZONE] [--dry_run] \
      [--config.num_train_steps=300 ...]
  python -m mobilenet_jax.sweep summarize runs/v1_grid

A sweep file defines `get_sweep(h)` (h is `mobilenet_jax.hyper`) returning a
list of override dicts, and may set `TPU = ...` and `ZONE = ...` defaults for
the tpu_vm launcher. `--config.KEY=VALUE` flags apply to every run. Each run
trains with `python -m mobilenet_jax.main` in its own workdir DIR/<run>
(`sweep_runs` names it and lists the files it holds besides training's).

Re-running the same command skips finished runs (those with the final
eval/step_<N>.json) and resumes the others from their checkpoints; a failed
run does not stop the others, and the exit status is 1 if any failed.
`summarize` writes DIR/results.csv, DIR/results.md and DIR/tradeoff.png
(`sweep_summary`).
"""

import collections
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags

from mobilenet_jax import hyper
from mobilenet_jax import sweep_runs
from mobilenet_jax import sweep_summary

LAUNCHERS = ('local', 'tpu_vm')
TPU_REPO_DIR = '~/mobilenet_jax'  # where the repository is on the TPU VM
ERROR_TAIL_LINES = 40


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
  return [f'--config.{key}={sweep_runs.format_value(value)}'
          for key, value in run.items()]


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
      `--config` parses it); recorded per run for `sweep_summary`.
    config_arg: the `--config` argument the runs train with, e.g.
      'configs/imagenet_mobilenet_v1.py:alpha=0.5'.
    workdir: the sweep directory (gs:// for tpu_vm).
    launcher: 'local' or 'tpu_vm'.
    tpu, zone: the TPU VM, for tpu_vm.
    config_overrides: `--config.KEY=VALUE` arguments for every run; they may
      not set a key the sweep sets.
    dry_run: print each run's command and run nothing.
    names: the runs' directory names; default `sweep_runs.run_names(runs)`
      (a subset of a sweep keeps the whole sweep's names by passing them).

  Returns:
    {run name: 'finished' or 'failed'} ('pending' for every run on a dry run).
  """
  _check_launcher(launcher, workdir, tpu, zone)
  names = sweep_runs.run_names(runs) if names is None else list(names)
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
      print(progress % f'running, log in {run_dir / sweep_runs.LOG_FILE}',
            flush=True)
      record = _launch(record, commands[name], run_dir)
      print(f'[{i}/{len(names)}] {name}: {record["status"]} after '
            f'{_duration(record["seconds"])}', flush=True)
      if record['status'] == 'failed':
        print(f'  {record["error"]}\n  see {run_dir / sweep_runs.ERROR_FILE}',
              flush=True)
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
  old = sweep_runs.read_json(run_dir / sweep_runs.RUN_FILE)
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
  status = 'finished' if sweep_runs.is_finished(run_dir) else 'pending'
  record = dict(index=index, name=name, **launched_as, command=command,
                config=run_config, error=error, status=status)
  sweep_runs.write_json(run_dir / sweep_runs.RUN_FILE, record)
  return record


def _launch(record: dict, command: Sequence[str], run_dir: epath.Path) -> dict:
  """Trains one run (unless its overrides did not apply); records the
  outcome in run.json, and the output's last lines in error.txt on failure."""
  start = time.time()
  run_file = run_dir / sweep_runs.RUN_FILE
  if record['error'] is None:
    sweep_runs.write_json(run_file, {**record, 'status': 'running'})
    returncode, tail = _execute(command, run_dir / sweep_runs.LOG_FILE)
    if returncode == 0 and not sweep_runs.is_finished(run_dir):
      tail += 'exited without the final evaluation (preempted?)\n'
  else:
    returncode, tail = None, record['error'] + '\n'
  finished = returncode == 0 and sweep_runs.is_finished(run_dir)
  lines = tail.strip().splitlines()
  record = {**record, 'status': 'finished' if finished else 'failed',
            'returncode': returncode, 'seconds': round(time.time() - start, 1),
            'error': None if finished else (lines[-1] if lines else '')}
  error_file = run_dir / sweep_runs.ERROR_FILE
  if finished:
    error_file.unlink(missing_ok=True)  # from an earlier attempt
  else:
    error_file.write_text(tail)
  sweep_runs.write_json(run_file, record)
  return record


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
      sweep_summary.summarize(argv[2])
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
