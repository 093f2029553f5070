"""Workdir layout and orbax checkpoints: resume, preemption.

  WORKDIR/config.json        the resolved config (evaluation and resume need
                             nothing but --workdir)
  WORKDIR/checkpoints/<step> orbax checkpoints of the whole TrainState
  WORKDIR/eval/step_<N>.json evaluation results (see evaluation.py)
  WORKDIR/metrics.jsonl      training metrics, one JSON object per log step
"""

import json
import os

import jax
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


def checkpoint_path(workdir: str, step: int) -> str:
  return os.fspath(checkpoint_dir(workdir) / str(step))


def eval_result_path(workdir: str, step: int) -> epath.Path:
  """WORKDIR/eval/step_<step>.json: the evaluation result of `step`."""
  return epath.Path(workdir) / EVAL_SUBDIR / f'step_{step}.json'
