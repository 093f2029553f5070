"""A sweep directory: one subdirectory per run, named from the values the
sweep varies (`alpha_0.5-rho_0.857`), holding besides training's own files:

  run.json   the run's overrides, command, config and status (pending,
             running, finished, failed), written before it starts
  log.txt    its output (appended on every attempt)
  error.txt  the last lines of its output, when it failed

A run is finished once training wrote its final evaluation,
eval/step_<num_train_steps>.json. Launching (`sweep`) writes these
directories and summarising (`sweep_summary`) reads them.
"""

import json
from typing import Any, Sequence

from etils import epath

from mobilenet_jax import checkpoint
from mobilenet_jax import hyper

RUN_FILE = 'run.json'
LOG_FILE = 'log.txt'
ERROR_FILE = 'error.txt'
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
      raise ValueError(f'runs {seen[name]} and {i} of the sweep are both named '
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
