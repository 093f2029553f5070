"""Workdir layout and orbax checkpoints: resume, preemption.

  WORKDIR/config.json        the resolved config (evaluation and resume need
                             nothing but --workdir)
  WORKDIR/checkpoints/<step> orbax checkpoints of the whole TrainState
  WORKDIR/eval/step_<N>.json evaluation results (see evaluation.py)
  WORKDIR/metrics.jsonl      training metrics, one JSON object per log step
"""

import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_SUBDIR = 'checkpoints'
CONFIG_FILE = 'config.json'
EVAL_SUBDIR = 'eval'


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + '\n')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ValueError(f'workdir has no {CONFIG_FILE}: {workdir!r} is not a '
                     'training workdir')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def absolute_path(path) -> epath.Path:
  """`path` made absolute if it is local (gs:// paths already are): orbax's
  array writer rejects relative paths, and an async save reports that only
  from its background thread, after the step that asked for it."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.resolve()


def checkpoint_dir(workdir: str) -> epath.Path:
  return absolute_path(workdir) / CHECKPOINT_SUBDIR


def create_manager(workdir: str, keep: int | None = None,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A manager over WORKDIR/checkpoints, saving asynchronously, keeping the
  `keep` newest (all if None)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores into `abstract_state`'s structure and shardings, so a
  checkpoint saved on N devices restores on M.

  A checkpoint whose tree differs from `abstract_state` (another model or
  optimizer, or a TrainState layout of an older version) raises a one-line
  ValueError naming the difference.
  """
  try:
    return manager.restore(step,
                           args=ocp.args.StandardRestore(abstract_state))
  except ValueError as e:
    lines = str(e).splitlines()
    # orbax either says it in one line or lists each differing path on an
    # unindented line ending in ':'.
    fields = [line[:-1] for line in lines[1:]
              if line.endswith(':') and not line.startswith(' ')]
    raise ValueError(
        f'checkpoint {os.fspath(manager.directory / str(step))} does not fit '
        f'this TrainState (saved by another config or an older layout): '
        + (f'differing fields {", ".join(fields)}' if fields else lines[0])
    ) from e


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(step, state) of the newest checkpoint that restores (`restore`).

  A checkpoint that fails to restore while an older one restores (a file
  corrupted or cut short) is reported as a warning and set aside, renamed
  to `<step>.unreadable`, so that training can save that step again. When
  none restores (e.g. every one was saved by another model), the newest
  one's error is raised and nothing is renamed.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      state = restore(manager, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
      continue
    for unreadable, error in zip(steps, errors):
      path = manager.directory / str(unreadable)
      logging.warning('checkpoint %s does not restore (%s); set aside as '
                      '%s.unreadable, resuming from step %d',
                      os.fspath(path), str(error).splitlines()[0][:200],
                      path.name, step)
      if jax.process_index() == 0:
        path.rename(path.parent / f'{path.name}.unreadable')
    if errors:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices('checkpoints set aside')
      manager.reload()
    return step, state
  raise errors[0]


def checkpoint_path(workdir: str, step: int) -> str:
  return os.fspath(checkpoint_dir(workdir) / str(step))


def eval_result_path(workdir: str, step: int) -> epath.Path:
  """WORKDIR/eval/step_<step>.json: the evaluation result of `step`."""
  return epath.Path(workdir) / EVAL_SUBDIR / f'step_{step}.json'
