r"""Sweeps: expand a sweep file into runs, launch them, summarize the results.

  python -m mobilenet_jax.sweep run --config=configs/default.py \
      --sweep=configs/sweeps/v1_width_resolution.py --workdir=runs/v1_grid \
      [--launcher=local|tpu_vm --tpu=A,B --zone=ZONE] [--chips_per_run=K] \
      [--runs=NAME,...|0,3] [--shard=i/n] [--data_dir=DIR] [--dry_run] \
      [--export=none|float|int8|float,int8] [--config.num_train_steps=300 ...]
  python -m mobilenet_jax.sweep status runs/v1_grid
  python -m mobilenet_jax.sweep summarize runs/v1_grid
  python -m mobilenet_jax.sweep export runs/v1_grid --export=int8

A sweep file defines `get_sweep(h)` (h is `mobilenet_jax.hyper`) returning a
list of override dicts, and may set `TPUS = [...]` and `ZONE = ...` defaults
for the tpu_vm launcher. `--config.KEY=VALUE` flags apply to every run. Each
run trains with `python -m mobilenet_jax.main` in its own workdir DIR/<run>
(`sweep_runs` names it and lists the files it holds besides training's).

Re-running the same command skips finished runs (those with the final
eval/step_<N>.json) and resumes the others from their checkpoints; a failed
run does not stop the others, and the exit status is 1 if any failed.

tpu_vm: a pool of TPU VMs (`--tpu=a,b,c` or TPUS in the sweep file): a
queue hands each run to the next free VM, or with `--chips_per_run=K` the
next free group of K chips, and the run trains there detached on every
worker from the code this command ships (`sweep_code`); a preempted or
silent run resumes elsewhere from its checkpoints (`sweep_pool`, and
docs/design.md for the protocol). `--runs` and `--shard` launch a subset.
Stopping this command stops no run; running it again watches the runs
still training and launches the rest. A user's mistake exits with status 2
and one line.

`--export` exports each finished run to LiteRT, evaluates and times the
export (`export_run`); `status` prints every run's state from the directory
alone; `summarize` writes DIR/results.csv, DIR/results.md, DIR/tradeoff.png
and, with exports, DIR/tradeoff_latency.png (`sweep_summary`).
"""

if __name__ == '__main__':
  # Before the imports that load TensorFlow.
  from mobilenet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()

import collections
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags

from mobilenet_jax import cli
from mobilenet_jax import config_check
from mobilenet_jax import hyper
from mobilenet_jax import sweep_code
from mobilenet_jax import sweep_pool
from mobilenet_jax import sweep_runs
from mobilenet_jax import sweep_summary

LAUNCHERS = ('local', 'tpu_vm')
ERROR_TAIL_LINES = sweep_runs.ERROR_TAIL_LINES
EXPORTS = tuple(sweep_runs.EXPORT_QUANTIZE)  # 'float', 'int8'
POLL_SECONDS = 60  # tpu_vm: how often the pool looks at its VMs and runs
HEARTBEAT_SECONDS = sweep_pool.HEARTBEAT_SECONDS


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file's runs and its tpu_vm defaults."""
  runs: list[hyper.Run]
  tpus: list[str] | None = None
  zone: str | None = None


def load_sweep(path: str) -> Sweep:
  """Runs `get_sweep(hyper)` of the sweep file at `path`."""
  if not os.path.isfile(path):
    raise config_check.ConfigError(f'sweep file not found: {path!r}')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise config_check.ConfigError(
        f'sweep file {path!r} must define get_sweep(h)')
  runs = module.get_sweep(hyper)
  if not (isinstance(runs, list) and runs and
          all(isinstance(run, dict) for run in runs)):
    raise config_check.ConfigError(
        f'get_sweep of {path!r} must return a non-empty list of '
        'override dicts')
  tpus = getattr(module, 'TPUS', None) or getattr(module, 'TPU', None)
  return Sweep(runs, parse_tpus(tpus) if tpus else None,
               getattr(module, 'ZONE', None))


def parse_tpus(tpus: str | Sequence[str]) -> list[str]:
  """'a,b,c' (or a list) -> ['a', 'b', 'c']: the pool's TPU VMs."""
  names = ([n.strip() for n in tpus.split(',')] if isinstance(tpus, str)
           else [str(n).strip() for n in tpus])
  names = [n for n in names if n]
  if not names or len(set(names)) != len(names):
    raise config_check.ConfigError(
        f'tpu must list distinct TPU VM names, got {tpus!r}')
  return names


def select_runs(names: Sequence[str], runs: str | None = None,
                shard: str | None = None) -> list[int]:
  """The indices of the runs to launch: `runs` ('NAME,NAME' or indices
  '0,3'), then of those every n-th from i (`shard` 'i/n'); all by default."""
  indices = list(range(len(names)))
  if runs:
    chosen = []
    for item in (r.strip() for r in runs.split(',') if r.strip()):
      if item in names:
        chosen.append(names.index(item))
      elif item.isdigit() and int(item) < len(names):
        chosen.append(int(item))
      else:
        raise config_check.ConfigError(
            f'runs: {item!r} is neither a run of this sweep nor '
            f'an index below {len(names)}; runs: '
            f'{", ".join(names)}')
    indices = list(dict.fromkeys(chosen))
  if shard:
    i, sep, n = shard.partition('/')
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
      raise config_check.ConfigError(
          f'shard must be i/n with 0 <= i < n, got {shard!r}')
    indices = indices[int(i)::int(n)]
  return indices


# Commands.


def config_overrides_from_argv(argv: Sequence[str]) -> list[str]:
  """The `--config.KEY=VALUE` arguments of a command line, in order."""
  overrides = [arg for arg in argv if arg.startswith('--config.')]
  for arg in overrides:
    if '=' not in arg:
      raise config_check.ConfigError(
          f'write config overrides as --config.KEY=VALUE, got '
          f'{arg!r}')
  return overrides


def override_flags(run: hyper.Run) -> list[str]:
  return [f'--config.{key}={sweep_runs.format_value(value)}'
          for key, value in run.items()]


def train_command(python: str, config_arg: str, workdir: str,
                  config_overrides: Sequence[str]) -> list[str]:
  return [python, '-m', 'mobilenet_jax.main', f'--config={config_arg}',
          f'--workdir={workdir}', *config_overrides]


def ship(workdir: str, remote_python: str | None = None,
         dry_run: bool = False) -> sweep_pool.Remote:
  """Packs this source tree into the sweep directory (`sweep_code.pack`;
  on a dry run into a temporary folder, naming the archive the real run
  would write) and returns how a worker runs it: the shell text that sets
  it up there (`sweep_code.setup_command`) and the python to use."""
  if dry_run:
    with tempfile.TemporaryDirectory() as temp:
      code = sweep_code.pack(temp)
    code = dataclasses.replace(code, archive=os.fspath(
        epath.Path(workdir) / 'code' / os.path.basename(code.archive)))
  else:
    code = sweep_code.pack(workdir)
  prefix, python = sweep_code.setup_command(code, remote_python)
  return sweep_pool.Remote(prefix=f'{prefix} && ', python=python)


def launch_command(launcher: str, config_arg: str, workdir: str,
                   config_overrides: Sequence[str], tpu: str | None = None,
                   zone: str | None = None,
                   shipped: sweep_pool.Remote | None = None) -> list[str]:
  """The argv that trains one run: on this machine (`local`, until it ends)
  or, detached, on every worker of TPU VM `tpu` with the `shipped` code, as
  the pool's first attempt there (`tpu_vm`, returns once started:
  `sweep_pool.worker_command`)."""
  if launcher == 'local':
    return train_command(sys.executable, config_arg, workdir, config_overrides)
  train = train_command(shipped.python, config_arg, workdir, config_overrides)
  command = sweep_pool.worker_command(shipped, workdir, 1, tpu, None, 0,
                                      HEARTBEAT_SECONDS / 4, train)
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu, f'--zone={zone}',
          '--worker=all', f'--command={command}']


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
      raise config_check.ConfigError(f'config has no field {key!r}')
    try:
      node[leaf] = value
    except TypeError as e:
      raise config_check.ConfigError(f'config field {key}: {e}') from None
  return config


def _duration(seconds: float) -> str:
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


def _execute(command: Sequence[str], log_path: epath.Path,
             env: dict | None = None) -> tuple[int, str]:
  """Runs `command`, appending its output to `log_path`; returns the exit
  status and the output's last lines."""
  tail = collections.deque(maxlen=ERROR_TAIL_LINES)
  streaming = not str(log_path).startswith('gs://')  # GCS uploads per flush
  with log_path.open('a') as log:
    log.write(f'$ {format_command(command)}\n')
    process = subprocess.Popen(command, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               errors='replace', env=env)
    for line in process.stdout:
      log.write(line)
      if streaming:
        log.flush()
      tail.append(line)
    returncode = process.wait()
  return returncode, ''.join(tail)


def _check_launcher(launcher: str, workdir: str, tpus: Sequence[str] | None,
                    zone: str | None, allow_local_workdir: bool = False,
                    chips_per_run: int | None = None) -> None:
  if launcher not in LAUNCHERS:
    raise config_check.ConfigError(
        f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
  if launcher == 'tpu_vm':
    if not (workdir.startswith('gs://') or allow_local_workdir):
      raise config_check.ConfigError(
          f'launcher tpu_vm needs a gs:// workdir that the TPU VMs can '
          f'write, got {workdir!r} (a folder every VM mounts: '
          '--allow_local_workdir)')
    if not (tpus and zone):
      raise config_check.ConfigError(
          'launcher tpu_vm needs --tpu and --zone (or TPUS and ZONE in the '
          'sweep file)')
  if chips_per_run is not None and chips_per_run < 1:
    raise config_check.ConfigError(
        f'chips_per_run must be a positive number of chips, got '
        f'{chips_per_run}')


def parse_exports(export: str | Sequence[str]) -> list[str]:
  """'none', 'float', 'int8' or 'float,int8' -> the kinds to export."""
  kinds = ([k.strip() for k in export.split(',')]
           if isinstance(export, str) else list(export))
  kinds = [k for k in kinds if k and k != 'none']
  for kind in kinds:
    if kind not in EXPORTS:
      raise config_check.ConfigError(
          f'export must be none or a comma-separated list of '
          f'{list(EXPORTS)}, got {export!r}')
  return list(dict.fromkeys(kinds))


def _with_data_dir(runs: Sequence[hyper.Run], config: ml_collections.ConfigDict,
                   config_overrides: Sequence[str], data_dir: str | None,
                   launcher: str):
  """`--data_dir` as the override `--config.data.data_dir=DIR` of every run
  (what the pipeline reads, recorded in each run's config). The tpu_vm
  workers need one: without it each looks under its own
  ~/tensorflow_datasets."""
  set_elsewhere = (any('data.data_dir' in run for run in runs) or any(
      arg.startswith('--config.data.data_dir=') for arg in config_overrides))
  if data_dir:
    if set_elsewhere:
      raise config_check.ConfigError(
          'give the data directory once: --data_dir or '
          '--config.data.data_dir (or the sweep\'s data.data_dir)')
    config = apply_overrides(config, {'data.data_dir': data_dir})
    config_overrides = [*config_overrides, f'--config.data.data_dir={data_dir}']
  if launcher == 'tpu_vm':
    for run in runs:
      dataset = run.get('data.dataset', config.data.dataset)
      if (run.get('data.data_dir', config.data.data_dir) is None and
          not str(dataset).startswith('folder:')):
        raise config_check.ConfigError(
            'launcher tpu_vm needs --data_dir=gs://BUCKET/tensorflow_datasets '
            '(or --config.data.data_dir): the tfds data directory every '
            'worker reads')
  return config, list(config_overrides)


def run_sweep(runs: Sequence[hyper.Run], *, config: ml_collections.ConfigDict,
              config_arg: str, workdir: str, launcher: str = 'local',
              tpus: Sequence[str] | None = None, zone: str | None = None,
              config_overrides: Sequence[str] = (), dry_run: bool = False,
              names: Sequence[str] | None = None,
              selected: Sequence[int] | None = None,
              remote_python: str | None = None,
              data_dir: str | None = None,
              export: str | Sequence[str] = 'none',
              chips_per_run: int | None = None,
              retries: int = sweep_pool.RETRIES,
              allow_local_workdir: bool = False,
              poll_seconds: float = POLL_SECONDS,
              heartbeat_seconds: float = HEARTBEAT_SECONDS) -> dict[str, str]:
  """Trains the runs of a sweep: one after another (`local`) or on a pool
  of TPU VMs (`tpu_vm`, `sweep_pool`).

  Args:
    runs: override dicts, e.g. from `load_sweep`.
    config: the base config, `config_overrides` already applied (as
      `--config` parses it); recorded per run for `sweep_summary`.
    config_arg: the `--config` argument the runs train with, e.g.
      'configs/imagenet_mobilenet_v1.py:alpha=0.5'.
    workdir: the sweep directory (gs:// for tpu_vm).
    launcher: 'local' or 'tpu_vm'.
    tpus, zone: the TPU VMs of the pool and their zone, for tpu_vm.
    config_overrides: `--config.KEY=VALUE` arguments for every run; they may
      not set a key the sweep sets.
    dry_run: print each run's command and run nothing.
    names: the runs' directory names; default `sweep_runs.run_names(runs)`.
    selected: the indices of the runs to launch (`select_runs`); default
      all. The others are left alone.
    remote_python: tpu_vm: an interpreter set up by hand on the workers
      (absolute, or relative to the home directory) instead of the venv each
      worker builds; the sweep's shipped code runs either way.
    data_dir: the tfds data directory, passed to every run as
      --config.data.data_dir (tpu_vm needs one, here or in the config).
    export: 'none', 'float', 'int8' or 'float,int8': export each finished
      run's final checkpoint to LiteRT, evaluate the export and time it
      (`export_run`, in a subprocess on the CPU); done exports are skipped.
    chips_per_run: tpu_vm: split each VM's chips into groups of this many,
      one training per group (default: one per VM).
    retries: tpu_vm: how many attempts of a run may be lost to the
      infrastructure (preempted VM, lost heartbeat) before it fails.
    allow_local_workdir: tpu_vm: accept a workdir that is not gs:// (a
      folder every VM sees, e.g. a test's).
    poll_seconds, heartbeat_seconds: tpu_vm: how often the pool looks at
      the VMs and runs, and after how long without a heartbeat a run is lost.

  Returns:
    {run name: 'finished', 'failed' or 'export failed'} for the selected
    runs ('pending' for each on a dry run).
  """
  tpus = list(tpus) if tpus else None
  _check_launcher(launcher, workdir, tpus, zone, allow_local_workdir,
                  chips_per_run)
  kinds = parse_exports(export)
  names = sweep_runs.run_names(runs) if names is None else list(names)
  if len(set(names)) != len(runs):
    raise config_check.ConfigError(
        f'need one distinct name per run, got {names}')
  config, config_overrides = _with_data_dir(runs, config, config_overrides,
                                            data_dir, launcher)
  swept = {key for run in runs for key in run}
  for arg in config_overrides:
    key = arg[len('--config.'):].partition('=')[0]
    if key in swept:
      raise config_check.ConfigError(
          f'{key} is set by the sweep; drop --config.{key} from '
          'the command line')
  selected = range(len(runs)) if selected is None else selected
  if launcher == 'tpu_vm' and not dry_run and shutil.which('gcloud') is None:
    raise config_check.ConfigError(
        'launcher tpu_vm needs the gcloud CLI on PATH')
  if launcher == 'tpu_vm' and chips_per_run:
    _check_chips_per_run(chips_per_run, [runs[i] for i in selected], config,
                         [] if dry_run else tpus, zone)
  shipped = (ship(workdir, remote_python, dry_run) if launcher == 'tpu_vm'
             else None)
  run_dirs = {names[i]: f"{workdir.rstrip('/')}/{names[i]}" for i in selected}
  commands = {
      names[i]: launch_command(launcher, config_arg, run_dirs[names[i]],
                               [*config_overrides, *override_flags(runs[i])],
                               tpus[0] if tpus else None, zone, shipped)
      for i in selected}
  if dry_run:
    for name in commands:
      print(format_command(commands[name]), flush=True)
    return dict.fromkeys(commands, 'pending')

  records = {names[i]: _prepare(i, names[i], runs[i], config, config_arg,
                                config_overrides,
                                format_command(commands[names[i]]),
                                epath.Path(workdir), launcher)
             for i in selected}
  if launcher == 'tpu_vm':
    statuses = _run_pool(records, runs, names, config_arg, config_overrides,
                         workdir, tpus, zone, shipped, chips_per_run,
                         retries, poll_seconds, heartbeat_seconds)
  else:
    statuses = _run_locally(records, commands, workdir)
  for name, record in records.items():
    if kinds and statuses[name] == 'finished':
      if not _export(record, kinds, epath.Path(workdir) / name):
        statuses[name] = 'export failed'

  failed = [name for name, status in statuses.items() if status == 'failed']
  export_failed = [name for name, status in statuses.items()
                   if status == 'export failed']
  print(f'sweep: {len(statuses) - len(failed)} finished, {len(failed)} failed '
        f'({", ".join(failed) or "none"})' +
        (f', exports failed for {", ".join(export_failed)}'
         if export_failed else '') +
        f'; summary: python -m mobilenet_jax.sweep summarize {workdir}',
        flush=True)
  return statuses


def _check_chips_per_run(chips_per_run: int, runs: Sequence[hyper.Run],
                         config: ml_collections.ConfigDict,
                         tpus: Sequence[str], zone: str) -> None:
  """A ConfigError, before anything is written, when `chips_per_run` does
  not divide the chips of a VM of `tpus` that describes itself now (a VM
  down now is checked once it is READY) or a run's global batch_size."""
  gcloud = sweep_pool.Gcloud(zone)
  for name in tpus:
    vm = gcloud.describe(name)
    if vm.accelerator_type:
      sweep_pool.chip_groups(sweep_pool.vm_shape(vm.accelerator_type),
                             chips_per_run, name)
  for run in runs:
    batch_size = run.get('batch_size', config.batch_size)
    if batch_size % chips_per_run:
      raise config_check.ConfigError(
          f'--chips_per_run={chips_per_run} does not divide the '
          f'global batch_size {batch_size} of run {run}')


def _run_locally(records: dict[str, dict], commands: dict[str, list[str]],
                 workdir: str) -> dict[str, str]:
  """Trains the runs one after another on this machine."""
  statuses = {}
  for i, (name, record) in enumerate(records.items(), 1):
    progress = (f'[{i}/{len(records)}] {name}: %s  '
                f'({list(statuses.values()).count("finished")} finished, '
                f'{list(statuses.values()).count("failed")} failed, '
                f'{len(records) - i + 1} left)')
    if record['status'] == 'finished':
      print(progress % 'finished before, skipped', flush=True)
    else:
      run_dir = epath.Path(workdir) / name
      print(progress % f'running, log in {run_dir / sweep_runs.LOG_FILE}',
            flush=True)
      record = _launch(record, commands[name], run_dir)
      print(f'[{i}/{len(records)}] {name}: {record["status"]} after '
            f'{_duration(record["seconds"])}', flush=True)
      if record['status'] == 'failed':
        print(f'  {record["error"]}\n  see {run_dir / sweep_runs.ERROR_FILE}',
              flush=True)
    statuses[name] = record['status']
  return statuses


def _run_pool(records: dict[str, dict], runs: Sequence[hyper.Run],
              names: Sequence[str], config_arg: str,
              config_overrides: Sequence[str], workdir: str,
              tpus: Sequence[str], zone: str, shipped: sweep_pool.Remote,
              chips_per_run: int | None, retries: int, poll_seconds: float,
              heartbeat_seconds: float) -> dict[str, str]:
  """Trains the runs on the pool of TPU VMs `tpus` (`sweep_pool.Pool`)."""
  gcloud = sweep_pool.Gcloud(zone)
  for name, record in records.items():
    if record['error'] is not None:  # its overrides did not apply
      record['status'] = 'failed'
      sweep_runs.write_json(epath.Path(workdir) / name / sweep_runs.RUN_FILE,
                            record)
  train = {names[i]: train_command(shipped.python, config_arg,
                                   f"{workdir.rstrip('/')}/{names[i]}",
                                   [*config_overrides, *override_flags(run)])
           for i, run in enumerate(runs) if names[i] in records}

  def launch(slot, name, epoch):
    run_dir = f"{workdir.rstrip('/')}/{name}"
    return gcloud.ssh(slot.vm, sweep_pool.worker_command(
        shipped, run_dir, epoch, slot.vm, slot.chips, slot.group,
        heartbeat_seconds / 4, train[name]))

  def stop(vm, name):
    gcloud.ssh(vm, sweep_pool.stop_command(
        shipped, f"{workdir.rstrip('/')}/{name}"))

  print(f'pool: {len(records)} runs on {", ".join(tpus)}' +
        (f', {chips_per_run} chips per run' if chips_per_run else '') +
        f'; watch it: python -m mobilenet_jax.sweep status {workdir}',
        flush=True)
  pool = sweep_pool.Pool(workdir, records, tpus, gcloud.describe, launch, stop,
                         chips_per_run=chips_per_run, retries=retries,
                         heartbeat_seconds=heartbeat_seconds,
                         poll_seconds=poll_seconds)
  try:
    return pool.run()
  except KeyboardInterrupt:
    print(f'\nstopped watching; the runs started go on (sweep status '
          f'{workdir}); the same command watches them again and launches the '
          'rest', flush=True)
    sys.exit(130)


def _prepare(index: int, name: str, run: hyper.Run,
             config: ml_collections.ConfigDict, config_arg: str,
             config_overrides: Sequence[str], command: str,
             workdir: epath.Path, launcher: str = 'local') -> dict:
  """Writes (and returns) a run's run.json before the sweep starts: status
  'finished' or 'pending', and its config, or the error applying its
  overrides. A run directory launched with other settings is an error.
  tpu_vm: a run the pool still runs stays 'running' (the new pool watches
  it), and the record keeps its attempts."""
  run_dir = workdir / name
  launched_as = dict(overrides=run, config_arg=config_arg,
                     config_overrides=list(config_overrides))
  old = sweep_runs.read_json(run_dir / sweep_runs.RUN_FILE)
  if old is not None and {k: old.get(k) for k in launched_as} != launched_as:
    raise config_check.ConfigError(
        f'{run_dir} was launched with other settings ({old.get("config_arg")} '
        f'{old.get("config_overrides")} {old.get("overrides")}); use a new '
        '--workdir')
  try:
    run_config = json.loads(apply_overrides(config, run).to_json_best_effort())
    error = None
  except config_check.ConfigError as e:
    run_config, error = None, str(e)
  status = 'finished' if sweep_runs.is_finished(run_dir) else 'pending'
  record = dict(index=index, name=name, **launched_as, command=command,
                config=run_config, error=error, status=status)
  if launcher == 'tpu_vm':
    record['worker_log'] = sweep_runs.worker_log_path(os.fspath(run_dir))
    pool_fields = ('attempts', 'vm', 'chips', 'epoch')
    record.update({k: old[k] for k in pool_fields if old and k in old})
    if status == 'pending' and old and old.get('status') == 'running':
      record['status'] = 'running'
  sweep_runs.write_json(run_dir / sweep_runs.RUN_FILE, record)
  return record


def _launch(record: dict, command: Sequence[str], run_dir: epath.Path) -> dict:
  """Trains one run on this machine (unless its overrides did not apply);
  records the outcome in run.json, and the output's last lines in
  error.txt on failure."""
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


# Exports.


def export_run(run_dir: str, kinds: Sequence[str] = ('float',),
               threads: int = 1) -> dict[str, dict]:
  """Exports a finished run's final checkpoint to LiteRT for each of
  `kinds` ('float', 'int8'), evaluates each export on the run's eval split
  (`litert.evaluate`, which writes eval/step_<N>.tflite_<quantization>.json)
  and times it on the LiteRT interpreter (`bench.benchmark_tflite`,
  `threads` threads, batch 1). Writes RUN_DIR/tflite/step_<N>.<kind>.tflite
  (+ export's .json) and .result.json, and returns {kind: that result}.
  A kind whose result exists is skipped, an existing export is reused. A
  gs:// run exports into a local temporary folder and copies up.

  Imports TensorFlow and JAX: run it on the CPU (the sweep runs it in a
  subprocess with JAX_PLATFORMS=cpu so as not to hold an accelerator).
  """
  # pylint: disable=g-import-not-at-top
  import tempfile
  from mobilenet_jax import bench
  from mobilenet_jax import export as export_lib
  from mobilenet_jax import litert
  # pylint: enable=g-import-not-at-top
  kinds = parse_exports(kinds)
  path = epath.Path(run_dir)
  if not sweep_runs.is_finished(path):
    raise config_check.ConfigError(
        f'{run_dir}: not finished (no final evaluation); '
        'nothing to export')
  step = int(json.loads((path / 'config.json').read_text())['num_train_steps'])
  local = '://' not in run_dir
  results = {}
  for kind in kinds:
    result_file = sweep_runs.export_result_path(path, step, kind)
    if result_file.exists():
      results[kind] = sweep_runs.read_json(result_file)
      print(f'{run_dir}: {kind} export done before, skipped', flush=True)
      continue
    target = sweep_runs.export_path(path, step, kind)
    target_meta = epath.Path(litert.metadata_path(os.fspath(target)))
    with tempfile.TemporaryDirectory() as temp:
      tflite = target if local else epath.Path(temp) / target.name
      meta = epath.Path(litert.metadata_path(os.fspath(tflite)))
      if target.exists() and target_meta.exists():
        if not local:
          tflite.write_bytes(target.read_bytes())
          meta.write_bytes(target_meta.read_bytes())
      else:
        tflite.parent.mkdir(parents=True, exist_ok=True)
        export_lib.export_tflite(
            run_dir, os.fspath(tflite), step=step,
            quantize=sweep_runs.EXPORT_QUANTIZE[kind])
        if not local:
          target.parent.mkdir(parents=True, exist_ok=True)
          target.write_bytes(tflite.read_bytes())
          target_meta.write_bytes(meta.read_bytes())
      print(export_lib.summary_line(os.fspath(target),
                                    json.loads(meta.read_text())), flush=True)
      accuracy = litert.evaluate(os.fspath(tflite))
      latency = bench.benchmark_tflite(os.fspath(tflite), threads=threads)
    result = {
        'kind': kind, 'quantization': sweep_runs.EXPORT_QUANTIZE[kind],
        'step': step, 'tflite': os.fspath(target),
        'top1': accuracy['top1'], 'top5': accuracy['top5'],
        'num_examples': accuracy['num_examples'],
        'latency_ms': latency['step_ms_median'], 'threads': threads,
        'size_bytes': latency['size_bytes'],
        'latency': {k: v for k, v in latency.items() if k != 'tflite'},
    }
    sweep_runs.write_json(result_file, result)
    print(f'{run_dir}: {kind} export top-1 {100 * result["top1"]:.1f}%, '
          f'{result["latency_ms"]:.2f} ms ({threads} thread)', flush=True)
    results[kind] = result
  return results


def _export(record: dict, kinds: Sequence[str], run_dir: epath.Path) -> bool:
  """`export_run` in a subprocess on the CPU, its output appended to the
  run's log; prints each export's result. Whether all succeeded."""
  name = record['name']
  if all(kind in sweep_runs.export_results(run_dir) for kind in kinds):
    print(f'  {name}: {", ".join(kinds)} exported before, skipped',
          flush=True)
    return True
  print(f'  {name}: exporting {", ".join(kinds)}', flush=True)
  command = [sys.executable, '-m', 'mobilenet_jax.sweep', 'export',
             os.fspath(run_dir), f'--export={",".join(kinds)}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  returncode, tail = _execute(command, run_dir / sweep_runs.LOG_FILE, env)
  results = sweep_runs.export_results(run_dir)
  for kind in kinds:
    if kind in results:
      print(f'  {name}: {kind} export top-1 '
            f'{100 * results[kind]["top1"]:.1f}%, '
            f'{results[kind]["latency_ms"]:.2f} ms', flush=True)
  if returncode == 0 and all(kind in results for kind in kinds):
    return True
  lines = tail.strip().splitlines()
  print(f'  {name}: export failed: {lines[-1] if lines else returncode}\n'
        f'  see {run_dir / sweep_runs.LOG_FILE}', flush=True)
  return False


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
                    'on this machine) or tpu_vm (a pool of TPU VMs: a queue '
                    'hands each run to the next free VM or chip group; see '
                    'docs/design.md).')
  flags.DEFINE_string('tpu', None, 'tpu_vm: the pool\'s TPU VMs, NAME[,NAME...] '
                      '(default: the sweep file\'s TPUS).')
  flags.DEFINE_string('zone', None, 'tpu_vm: their zone (default: the sweep '
                      'file\'s ZONE).')
  flags.DEFINE_integer('chips_per_run', None, 'tpu_vm: split each VM\'s chips '
                       'into groups of K, one training per group at once '
                       '(must divide the chips and every run\'s batch_size; '
                       'default: one training per VM).')
  flags.DEFINE_integer('retries', sweep_pool.RETRIES, 'tpu_vm: attempts of a '
                       'run that may be lost to the infrastructure (preempted '
                       'VM, no heartbeat) before it fails; a run\'s own '
                       'failure (exit status 1 or 2) is not retried.')
  flags.DEFINE_string('runs', None, 'Launch only these runs: names or indices, '
                      'NAME,NAME or 0,3 (the rest are left alone).')
  flags.DEFINE_string('shard', None, 'Launch every n-th run from the i-th: '
                      'i/n (after --runs).')
  flags.DEFINE_bool('allow_local_workdir', False, 'tpu_vm: accept a workdir '
                    'that is not gs:// (a folder every VM sees).')
  flags.DEFINE_float('heartbeat_seconds', HEARTBEAT_SECONDS, 'tpu_vm: a run '
                     'whose worker wrote no heartbeat this long is lost.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')
  flags.DEFINE_string('data_dir', None, 'The tfds data directory, given to '
                      'every run as --config.data.data_dir (tpu_vm needs '
                      'one, e.g. gs://BUCKET/tensorflow_datasets).')
  flags.DEFINE_string('remote_python', None, 'tpu_vm: an interpreter set up by '
                      'hand on the workers (absolute, or relative to the home '
                      'directory) instead of the venv each worker builds; the '
                      'sweep\'s shipped code runs either way.')
  flags.DEFINE_string('export', 'none', 'none, float, int8 or float,int8: '
                      'export each finished run to LiteRT, evaluate and time '
                      'the export (1 thread).')
  flags.DEFINE_float('poll_seconds', POLL_SECONDS, 'tpu_vm: how often the '
                     'pool looks at its VMs and runs.')


def run_from_flags(runs: Sequence[hyper.Run], *,
                   tpus: Sequence[str] | None = None, zone: str | None = None,
                   names: Sequence[str] | None = None) -> dict[str, str]:
  """`run_sweep` with the settings of `define_flags`' flags (`tpus` and
  `zone` are the defaults for --tpu and --zone) and the command line's
  --config.KEY=VALUE arguments."""
  values = flags.FLAGS
  if values.config is None or not values.workdir:
    raise app.UsageError('give --config and --workdir')
  names = sweep_runs.run_names(runs) if names is None else list(names)
  return run_sweep(
      runs, names=names, config=values.config,
      selected=select_runs(names, values.runs, values.shard),
      config_arg=config_flags.get_config_filename(values['config']),
      workdir=values.workdir, launcher=values.launcher,
      tpus=parse_tpus(values.tpu) if values.tpu else tpus,
      zone=values.zone or zone,
      config_overrides=config_overrides_from_argv(sys.argv),
      dry_run=values.dry_run, remote_python=values.remote_python,
      data_dir=values.data_dir, export=values.export,
      chips_per_run=values.chips_per_run, retries=values.retries,
      allow_local_workdir=values.allow_local_workdir,
      poll_seconds=values.poll_seconds,
      heartbeat_seconds=values.heartbeat_seconds)


_USAGE = ('usage: python -m mobilenet_jax.sweep run --config=FILE --sweep=FILE '
          '--workdir=DIR [...]  |  python -m mobilenet_jax.sweep summarize DIR'
          '  |  python -m mobilenet_jax.sweep status DIR  |  python -m '
          'mobilenet_jax.sweep export DIR --export=float,int8')


def print_status(workdir: str) -> list[sweep_runs.RunState]:
  """Prints one line per run of a sweep directory (not started / running
  with its VM and chips, step and last top-1 / finished with top-1 / failed
  with the error; a pool run's elapsed time and chip-hours) and the counts
  and chip-hours; returns the states."""
  states = sweep_runs.sweep_states(workdir)
  if not states:
    raise config_check.ConfigError(
        f'no runs (subdirectories with {sweep_runs.RUN_FILE}) '
        f'in {workdir!r}')
  now = time.time()
  for state in states:
    print(sweep_runs.describe(state, now))
  counts = collections.Counter(state.status for state in states)
  chip_hours = [s.chip_hours for s in states if s.chip_hours is not None]
  print(f'{len(states)} runs: ' + ', '.join(
      f'{counts[status]} {label}' for status, label in (
          ('finished', 'finished'), ('running', 'running'),
          ('failed', 'failed'), ('pending', 'not started'))) +
        (f'; {sum(chip_hours):.2f} chip-hours' if chip_hours else ''))
  return states


def main(argv):
  if len(argv) < 2 or argv[1] not in ('run', 'summarize', 'status', 'export'):
    raise app.UsageError(_USAGE)
  if argv[1] in ('status', 'export'):
    if len(argv) != 3:
      raise app.UsageError(_USAGE)
    if argv[1] == 'status':
      print_status(argv[2])
      return
    kinds = parse_exports(flags.FLAGS.export)
    if not kinds:
      raise config_check.ConfigError('give --export=float, int8 or float,int8')
    path = epath.Path(argv[2])
    if (path / sweep_runs.RUN_FILE).exists():  # one run
      export_run(argv[2], kinds)
    else:  # every finished run of a sweep
      for state in sweep_runs.sweep_states(argv[2]):
        if state.status == 'finished':
          export_run(os.fspath(path / state.name), kinds)
    return
  if argv[1] == 'summarize':
    if len(argv) != 3:
      raise app.UsageError(_USAGE)
    rows = sweep_summary.summarize(argv[2])
    path = epath.Path(argv[2])
    print((path / 'results.md').read_text(), end='')
    print(f'wrote {", ".join(sweep_summary.written_files(rows))} in {path}')
    return
  if len(argv) != 2:
    raise app.UsageError(f'unexpected arguments: {argv[2:]}')
  if not flags.FLAGS.sweep:
    raise app.UsageError('run needs --sweep')
  sweep = load_sweep(flags.FLAGS.sweep)
  statuses = run_from_flags(sweep.runs, tpus=sweep.tpus, zone=sweep.zone)
  if {'failed', 'export failed'} & set(statuses.values()):
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  flags.DEFINE_string('sweep', None, 'A sweep file (configs/sweeps/*.py).')
  cli.run(main)
