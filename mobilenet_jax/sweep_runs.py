"""A sweep directory: one subdirectory per run, named from the values the
sweep varies (`alpha_0.5-rho_0.857`), holding besides training's own files:

  run.json   the run's overrides, command, config and status (pending,
             running, finished, failed), written before it starts
  log.txt    its output (appended on every attempt); with the tpu_vm
             launcher, log.<vm>.<host>.txt each worker's output once an
             attempt ended (while it trains: `worker_log_path` on the
             worker's disk), and the pool's lease.json and
             heartbeat.<epoch>.<host>.json (`sweep_pool`)
  error.txt  the last lines of its output, when it failed
  tflite/    with `sweep run --export`: step_<N>.<float|int8>.tflite, its
             .json (export's metadata) and .result.json (the export's top-1
             and top-5 on the eval split and its LiteRT latency)

A run is finished once training wrote its final evaluation,
eval/step_<num_train_steps>.json. Launching (`sweep`) writes these
directories; `run_state` (`sweep status`) and `sweep_summary` read them.
"""

import dataclasses
import json
import os
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
  vm: str | None = None
  chips: list[int] | None = None
  chip_count: int | None = None
  elapsed: float | None = None
  chip_hours: float | None = None


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
                   worker_log=record.get('worker_log'), vm=record.get('vm'),
                   chips=record.get('chips'))
  _add_pool_time(state, record, time.time())
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
  evals = _eval_results(run_dir)
  if evals:  # the latest evaluation so far
    state.top1, state.top5 = evals[-1][1].get('top1'), evals[-1][1].get('top5')
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


def _eval_results(run_dir: epath.Path) -> list[tuple[int, dict]]:
  """(step, result) of training's own evaluations (eval/step_<N>.json), by
  step."""
  folder = run_dir / checkpoint.EVAL_SUBDIR
  if not folder.exists():
    return []
  results = []
  for path in folder.glob('step_*.json'):
    step = path.name[len('step_'):-len('.json')]
    if step.isdigit():
      try:
        results.append((int(step), json.loads(path.read_text())))
      except json.JSONDecodeError:  # being written
        continue
  return sorted(results, key=lambda item: item[0])


def _add_pool_time(state: RunState, record: dict, now: float) -> None:
  """Elapsed seconds and chip-hours of a pool run's attempts (run.json's
  `attempts`, launcher clock; a running one counts until `now`)."""
  attempts = record.get('attempts') or []
  if not attempts:
    return
  state.elapsed = state.chip_hours = 0.0
  state.chip_count = attempts[-1].get('chip_count')
  for attempt in attempts:
    seconds = max(0.0, (attempt.get('end') or now) - attempt['start'])
    state.elapsed += seconds
    state.chip_hours += attempt.get('chip_count', 0) * seconds / 3600


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


def _where(state: RunState) -> str:
  if not state.vm:
    return ''
  if state.chips:
    chips = f' chips {",".join(map(str, state.chips))}'
  else:
    chips = f' ({state.chip_count} chips)' if state.chip_count else ''
  return f' on {state.vm}{chips}'


def describe(state: RunState, now: float | None = None) -> str:
  """One line: 'alpha_0.5: running on tpu-a chips 0,1, step 300/1000,
  top-1 41.0% (updated 2 min ago); 1h02m, 2.07 chip-h'."""
  now = time.time() if now is None else now
  top1 = f', top-1 {100 * state.top1:.1f}%' if state.top1 is not None else ''
  if state.status == 'pending':
    text = 'not started'
  elif state.status == 'finished':
    text = 'finished' + _where(state) + top1
  elif state.status == 'failed':
    text = 'failed' + _where(state) + (f': {state.error}' if state.error
                                       else '')
  else:
    total = f'/{state.num_train_steps}' if state.num_train_steps else ''
    text = ('running' + _where(state) + ', ' +
            (f'step {state.step}{total}' if state.step is not None
             else 'no step yet') + top1)
    if state.updated is not None:
      text += f' (updated {_ago(max(0.0, now - state.updated))} ago)'
    if state.worker_log and not state.vm:
      text += f'; worker log {state.worker_log}'
  if state.elapsed is not None:
    text += f'; {_ago(state.elapsed)}, {state.chip_hours:.2f} chip-h'
  return f'{state.name}: {text}'


# The tpu_vm launcher's side on each worker (`sweep_pool.worker`, started
# detached: nohup setsid, output appended to a log on the worker's disk).

WORKER_LOG_ROOT = '~/mobilenet_jax_logs'


def worker_log_path(run_dir: str) -> str:
  """Where a tpu_vm run's output goes on each worker while it trains:
  ~/mobilenet_jax_logs/<run dir without gs://>/log.txt."""
  path = run_dir.split('://', 1)[-1].strip('/')
  return f'{WORKER_LOG_ROOT}/{path}/{LOG_FILE}'
