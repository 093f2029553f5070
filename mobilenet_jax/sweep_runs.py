"""A sweep directory: one subdirectory per run, named from the values the
sweep varies (`alpha_0.5-rho_0.857`), holding besides training's own files:

  run.json   the run's overrides, command, config and status (pending,
             running, finished, failed), written before it starts
  log.txt    its output (appended on every attempt); with the tpu_vm
             launcher, the gcloud command's, and log.<host>.txt each
             worker's output once an attempt ended (while it trains:
             `worker_log_path` on the worker's disk)
  error.txt  the last lines of its output, when it failed
  tflite/    with `sweep run --export`: step_<N>.<float|int8>.tflite, its
             .json (export's metadata) and .result.json (the export's top-1
             and top-5 on the eval split and its LiteRT latency)

A run is finished once training wrote its final evaluation,
eval/step_<num_train_steps>.json. Launching (`sweep`) writes these
directories; `run_state` (`sweep status`) and `sweep_summary` read them.
"""

import collections
import dataclasses
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

from etils import epath

from mobilenet_jax import checkpoint
from mobilenet_jax import config_check
from mobilenet_jax import hyper

RUN_FILE = 'run.json'
LOG_FILE = 'log.txt'
ERROR_FILE = 'error.txt'
METRICS_FILE = 'metrics.jsonl'
EXPORT_SUBDIR = 'tflite'
# `sweep run --export` names -> `export.export_tflite(quantize=...)`.
EXPORT_QUANTIZE = {'float': 'none', 'int8': 'int8'}
ERROR_TAIL_LINES = 40
_SAFE_CHARS = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
                        '0123456789._+-')


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
      raise config_check.ConfigError(
          f'runs {seen[name]} and {i} of the sweep are both named '
          f'{name!r}: a sweep must not list a run twice')
    seen[name] = i
  return names


def read_json(path: epath.Path) -> dict | None:
  """The JSON object in `path`; None if there is no such file."""
  return json.loads(path.read_text()) if path.exists() else None


def write_json(path: epath.Path, record: dict) -> None:
  """Writes `record` to `path` as indented JSON, making its folder."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=2) + '\n')


def final_eval_path(run_dir: epath.Path) -> epath.Path | None:
  """eval/step_<num_train_steps>.json of a run whose training started (its
  config.json exists); None before."""
  config_path = run_dir / checkpoint.CONFIG_FILE
  if not config_path.exists():
    return None
  num_train_steps = json.loads(config_path.read_text())['num_train_steps']
  return checkpoint.eval_result_path(run_dir, num_train_steps)


def is_finished(run_dir: epath.Path) -> bool:
  """Whether the run's final evaluation exists."""
  path = final_eval_path(run_dir)
  return path is not None and path.exists()


def export_path(run_dir: epath.Path, step: int, kind: str) -> epath.Path:
  """RUN_DIR/tflite/step_<N>.<kind>.tflite (kind: 'float' or 'int8')."""
  return run_dir / EXPORT_SUBDIR / f'step_{step}.{kind}.tflite'


def export_result_path(run_dir: epath.Path, step: int,
                       kind: str) -> epath.Path:
  """The export's top-1/top-5 and latency: step_<N>.<kind>.result.json."""
  return run_dir / EXPORT_SUBDIR / f'step_{step}.{kind}.result.json'


def export_results(run_dir: epath.Path) -> dict[str, dict]:
  """{kind: result} of the final step's exports that have a result."""
  path = final_eval_path(run_dir)
  if path is None:
    return {}
  step = int(path.stem.split('_', 1)[1])
  results = {}
  for kind in EXPORT_QUANTIZE:
    result = read_json(export_result_path(run_dir, step, kind))
    if result is not None:
      results[kind] = result
  return results


# The state of a run, from its directory alone.


@dataclasses.dataclass
class RunState:
  """Where a run stands. status: 'pending' (not started), 'running' (started
  and not finished: training now, or stopped without the final evaluation),
  'finished' or 'failed' (run.json's record). step: the last step that
  metrics.jsonl or a checkpoint records; updated: when metrics.jsonl or the
  newest checkpoint last changed (seconds since the epoch)."""
  name: str
  status: str
  step: int | None = None
  num_train_steps: int | None = None
  top1: float | None = None
  top5: float | None = None
  error: str | None = None
  updated: float | None = None
  worker_log: str | None = None


def metrics_records(run_dir: epath.Path) -> list[dict]:
  """The lines of metrics.jsonl (a half-written last line is skipped)."""
  path = run_dir / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def _checkpoint_steps(run_dir: epath.Path) -> list[epath.Path]:
  folder = run_dir / checkpoint.CHECKPOINT_SUBDIR
  if not folder.exists():
    return []
  return sorted((p for p in folder.iterdir() if p.name.isdigit()),
                key=lambda p: int(p.name))


def _mtime(path: epath.Path) -> float | None:
  try:
    return float(path.stat().mtime)
  except Exception:  # pylint: disable=broad-except
    return None


def run_state(run_dir: epath.Path, record: dict | None = None) -> RunState:
  """The state of the run in `run_dir` (`record`: its run.json, read if not
  given), from its files alone: a final evaluation means finished, a
  'failed' record failed, training's files or a 'running' record running."""
  record = read_json(run_dir / RUN_FILE) if record is None else record
  record = record or {}
  state = RunState(record.get('name', run_dir.name), 'pending',
                   worker_log=record.get('worker_log'))
  config_path = run_dir / checkpoint.CONFIG_FILE
  if config_path.exists():
    state.num_train_steps = json.loads(
        config_path.read_text())['num_train_steps']
  steps = [r['step'] for r in metrics_records(run_dir)
           if isinstance(r.get('step'), int)]
  checkpoints = _checkpoint_steps(run_dir)
  if steps or checkpoints:
    state.step = max(steps + [int(p.name) for p in checkpoints])
    times = [_mtime(run_dir / METRICS_FILE) if steps else None,
             _mtime(checkpoints[-1]) if checkpoints else None]
    state.updated = max((t for t in times if t is not None), default=None)
  final = final_eval_path(run_dir)
  if final is not None and final.exists():
    result = json.loads(final.read_text())
    state.status = 'finished'
    state.top1, state.top5 = result.get('top1'), result.get('top5')
    state.step = state.num_train_steps
  elif record.get('status') == 'failed':
    state.status = 'failed'
    state.error = record.get('error')
  elif (record.get('status') == 'running' or config_path.exists() or
        checkpoints):
    state.status = 'running'
  return state


def sweep_states(workdir: str) -> list[RunState]:
  """The state of every run (subdirectory with run.json) of a sweep
  directory, in sweep order."""
  if not epath.Path(workdir).is_dir():
    raise config_check.ConfigError(f'sweep directory not found: {workdir!r}')
  records = []
  for run_dir in epath.Path(workdir).iterdir():
    record = read_json(run_dir / RUN_FILE)
    if record is not None:
      records.append((record.get('index', 0), record.get('name', ''), record,
                      run_dir))
  records.sort(key=lambda item: item[:2])
  return [run_state(run_dir, record) for _, _, record, run_dir in records]


def _ago(seconds: float) -> str:
  if seconds < 120:
    return f'{seconds:.0f} s'
  if seconds < 7200:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'


def describe(state: RunState, now: float | None = None) -> str:
  """One line: 'alpha_0.5: running, step 300/1000 (updated 2 min ago)'."""
  now = time.time() if now is None else now
  if state.status == 'pending':
    text = 'not started'
  elif state.status == 'finished':
    text = 'finished'
    if state.top1 is not None:
      text += f', top-1 {100 * state.top1:.1f}%'
  elif state.status == 'failed':
    text = 'failed' + (f': {state.error}' if state.error else '')
  else:
    total = f'/{state.num_train_steps}' if state.num_train_steps else ''
    text = ('running, ' + (f'step {state.step}{total}'
                           if state.step is not None else 'no step yet'))
    if state.updated is not None:
      text += f' (updated {_ago(max(0.0, now - state.updated))} ago)'
    if state.worker_log:
      text += f'; worker log {state.worker_log}'
  return f'{state.name}: {text}'


# The tpu_vm launcher's side on each worker: `python -m
# mobilenet_jax.sweep_runs worker RUN_DIR LOG -- COMMAND...`, started detached
# (nohup setsid, output appended to LOG on the worker's disk).

WORKER_LOG_ROOT = '~/mobilenet_jax_logs'


def worker_log_path(run_dir: str) -> str:
  """Where a tpu_vm run's output goes on each worker while it trains:
  ~/mobilenet_jax_logs/<run dir without gs://>/log.txt."""
  path = run_dir.split('://', 1)[-1].strip('/')
  return f'{WORKER_LOG_ROOT}/{path}/{LOG_FILE}'


def uploaded_log_name(host: str) -> str:
  """A worker's log in the run directory once its attempt ended."""
  return f'log.{host}.txt'


def training_pids(run_dir: str, proc: str = '/proc') -> list[int]:
  """Other processes on this machine training into `run_dir`
  (`mobilenet_jax.main ... --workdir=RUN_DIR`)."""
  pids = []
  for entry in os.listdir(proc) if os.path.isdir(proc) else []:
    if not entry.isdigit() or int(entry) == os.getpid():
      continue
    try:
      with open(os.path.join(proc, entry, 'cmdline'), 'rb') as f:
        argv = f.read().decode(errors='replace').split('\0')
    except OSError:
      continue
    if 'mobilenet_jax.main' in argv and f'--workdir={run_dir}' in argv:
      pids.append(int(entry))
  return pids


def run_worker(run_dir: str, log: str, command: Sequence[str],
               host: str | None = None) -> int:
  """Runs `command` (training into `run_dir`) unless this machine already
  trains into it; its output goes to this process's stdout, which the
  launcher sends to LOG on the worker's disk. Afterwards copies LOG to
  RUN_DIR/log.<host>.txt and, when training failed or stopped before the
  final evaluation, records 'failed' (the last line of output, the exit
  status, the host) in run.json and the last lines in error.txt. Returns
  the exit status."""
  host = host or socket.gethostname()
  log = os.path.expanduser(log)
  running = training_pids(run_dir)
  if running:
    print(f'{run_dir} is already training on {host} (pid '
          f'{", ".join(map(str, running))}); not starting it twice',
          flush=True)
    return 0
  print(f'$ {shlex.join(command)}', flush=True)
  returncode = subprocess.call(list(command))
  path = epath.Path(run_dir)
  finished = returncode == 0 and is_finished(path)
  tail = []
  if os.path.exists(log):
    with open(log, errors='replace') as f:
      tail = list(collections.deque(f, maxlen=ERROR_TAIL_LINES))
  if returncode == 0 and not finished:
    tail.append('exited without the final evaluation (preempted?)\n')
  print(f'exit status {returncode}', flush=True)
  if os.path.exists(log):
    with open(log, errors='replace') as f:
      (path / uploaded_log_name(host)).write_text(f.read())
  if not finished:
    lines = ''.join(tail).strip().splitlines()
    record = read_json(path / RUN_FILE) or {}
    write_json(path / RUN_FILE, {
        **record, 'status': 'failed', 'returncode': returncode,
        'error': lines[-1] if lines else '', 'host': host})
    (path / ERROR_FILE).write_text(''.join(tail))
  return returncode


if __name__ == '__main__':
  if len(sys.argv) < 5 or sys.argv[1] != 'worker' or sys.argv[4] != '--':
    sys.exit('usage: python -m mobilenet_jax.sweep_runs worker RUN_DIR LOG -- '
             'COMMAND...')
  sys.exit(run_worker(sys.argv[2], sys.argv[3], sys.argv[5:]))
