"""Workdir layout and orbax checkpoints: resume, preemption.

  WORKDIR/config.json        the resolved config (evaluation and resume need
                             nothing but --workdir)
  WORKDIR/checkpoints/<step> orbax checkpoints of the whole TrainState
  WORKDIR/eval/step_<N>[.<variant>].json evaluation results (evaluation.py)
  WORKDIR/metrics.jsonl      training metrics, one JSON object per log step
"""

import json
import os
import re

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from mobilenet_jax import config_check

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
    raise config_check.ConfigError(
        f'workdir has no {CONFIG_FILE}: {workdir!r} is not a '
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


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (a full disk, a write error); the
  older checkpoints are intact."""


TMP_SUFFIX = '.orbax-checkpoint-tmp'


def _write_error(manager: ocp.CheckpointManager, step: int | None,
                 error: Exception) -> CheckpointWriteError:
  """A one-line CheckpointWriteError naming the workdir, the OS error and
  the checkpoints kept; the failed save's partial folder is removed (it
  would hold the disk space that ran out)."""
  text = str(error)
  if step is None:  # a background save: its folder names the step
    found = re.search(r'/(\d+)' + re.escape(TMP_SUFFIX), text)
    step = int(found[1]) if found else None
  if isinstance(error, OSError) and error.strerror:
    reason = f'[Errno {error.errno}] {error.strerror}'
  else:  # tensorstore's text holds "[os_error_code='27']" among others
    found = re.search(r"\[os_error_code='?(\d+)'?\]", text)
    reason = (f'[Errno {found[1]}] {os.strerror(int(found[1]))}' if found
              else ' '.join(text.split())[:300])
  directory = manager.directory
  if jax.process_index() == 0:
    for partial in directory.glob(f'*{TMP_SUFFIX}*'):
      partial.rmtree(missing_ok=True)
  manager.reload()
  kept = list(manager.all_steps())
  return CheckpointWriteError(
      f'could not write the checkpoint of step '
      f'{"?" if step is None else step} in workdir '
      f'{os.fspath(directory.parent)}: {reason}; checkpoints kept: '
      f'{", ".join(map(str, kept)) or "none"}')


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts saving `state` as `step` (asynchronously); a failure, of this
  save or of the one before, is a CheckpointWriteError."""
  try:
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
  except Exception as e:  # pylint: disable=broad-except
    raise _write_error(manager, None if 'orbax-checkpoint-tmp' in str(e)
                       else step, e) from e


def wait_until_saved(manager: ocp.CheckpointManager) -> None:
  """Waits for the save in flight; its failure is a CheckpointWriteError."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _write_error(manager, None, e) from e


def close(manager: ocp.CheckpointManager) -> None:
  """`wait_until_saved`, then closes the manager (whatever happened)."""
  try:
    wait_until_saved(manager)
  finally:
    try:
      manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('closing the checkpoint manager: %s',
                      str(e).splitlines()[0][:300])


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
  """Restores into `abstract_state`'s structure and shardings, so a
  checkpoint saved on N devices restores on M.

  A checkpoint whose tree differs from `abstract_state` (another model or
  optimizer, or a TrainState layout of an older version) raises a one-line
  ConfigError naming the difference.
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
    raise config_check.ConfigError(
        f'checkpoint {os.fspath(manager.directory / str(step))} does not fit '
        f'this TrainState (saved by another config or an older layout): '
        + (f'differing fields {", ".join(fields)}' if fields else lines[0])
    ) from e


def _name(path) -> str:
  """A tree path as orbax names arrays: 'params.block_1.conv.kernel'."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  return '.'.join(parts)


def array_shapes(tree) -> dict[str, tuple]:
  """{array name: shape} of a pytree of arrays, ShapeDtypeStructs or orbax
  array metadata."""
  return {_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, 'shape')}


def saved_shapes(item_dir) -> dict[str, tuple] | None:
  """{array name: shape} of the orbax StandardSave item in `item_dir`
  (CHECKPOINT/default, or a converted model's variables/), read from its
  metadata alone: no array is read. None if the metadata does not read or
  names no array (orbax reads a cut-short `_METADATA` as an empty tree)."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      shapes = array_shapes(checkpointer.metadata(item_dir).item_metadata)
  except Exception:  # pylint: disable=broad-except
    return None
  return shapes or None


# The JSON files of a checkpoint folder that orbax writes last for a step.
METADATA_FILES = ('_CHECKPOINT_METADATA', 'default/_METADATA')


def metadata_parses(step_dir) -> bool:
  """False when one of the checkpoint's METADATA_FILES exists but is not
  JSON (a write cut short, a truncated copy): the checkpoint is corrupt,
  and nothing it says about its arrays can be trusted."""
  for name in METADATA_FILES:
    path = epath.Path(step_dir) / name
    try:
      json.loads(path.read_text())
    except FileNotFoundError:
      continue
    except (OSError, ValueError):
      return False
  return True


def shape_differences(saved: dict, expected: dict, limit: int = 2,
                      extra: bool = True) -> list:
  """What differs between {name: shape} of a checkpoint (`saved`) and of
  the state to restore it into (`expected`), as short phrases; `extra`:
  whether the checkpoint's arrays that the state lacks count."""
  missing = [k for k in expected if k not in saved]
  unused = [k for k in saved if k not in expected] if extra else []
  other = [k for k in expected if k in saved and saved[k] != expected[k]]
  phrases = []
  if missing:
    phrases.append(f'{len(missing)} arrays not in the checkpoint (e.g. '
                   f'{", ".join(missing[:limit])})')
  if unused:
    phrases.append(f'{len(unused)} arrays only in the checkpoint (e.g. '
                   f'{", ".join(unused[:limit])})')
  if other:
    phrases.append(f'{len(other)} of another shape (e.g. ' + ', '.join(
        f'{k} {saved[k]} saved, {expected[k]} here' for k in other[:limit])
                   + ')')
  return phrases


# The config fields that decide the TrainState's arrays.
STATE_FIELDS = ('model.name', 'model.alpha', 'model.expansion', 'num_classes',
                'optim.name', 'optim.ema_decay', 'optim.momentum',
                'freeze_backbone')


def _field(config, dotted: str):
  for part in dotted.split('.'):
    if config is None or part not in config:
      return None
    config = config[part]
  return config


def config_differences(saved_config, config) -> list:
  """'model.name mobilenet_v1 saved, mobilenet_v2 here' for each of
  STATE_FIELDS that differs."""
  return [f'{f} {_field(saved_config, f)!r} saved, {_field(config, f)!r} here'
          for f in STATE_FIELDS
          if _field(saved_config, f) != _field(config, f)]


def check_fits(manager: ocp.CheckpointManager, step: int, abstract_state,
               config=None) -> None:
  """Raises a one-line ConfigError if checkpoint `step`'s arrays (names and
  shapes, from its metadata: seconds, nothing compiled or read) differ from
  `abstract_state`'s, naming the config fields (`STATE_FIELDS`, against the
  workdir's config.json) and the arrays that differ. A checkpoint whose
  metadata does not read is corrupt, not another model's: it is left to
  `restore_latest`, which sets it aside."""
  step_dir = manager.directory / str(step)
  saved = (saved_shapes(step_dir / 'default')
           if metadata_parses(step_dir) else None)
  if saved is None:
    return
  differences = shape_differences(saved, array_shapes(abstract_state))
  if not differences:
    return
  if config is not None:
    try:
      saved_config = load_config(os.fspath(manager.directory.parent))
    except (ValueError, OSError):
      saved_config = None
    if saved_config is not None:
      differences = config_differences(saved_config, config) + differences
  raise config_check.ConfigError(
      f'checkpoint {os.fspath(manager.directory / str(step))} does not fit '
      f'this TrainState (saved by another model or optimizer): '
      f'{"; ".join(differences)}')


def saved_steps(workdir: str) -> list[int]:
  """The steps of WORKDIR/checkpoints/<step>, without creating anything."""
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(step, state) of the newest checkpoint that restores (`restore`).

  A checkpoint that fails to restore, or whose metadata does not parse
  (`metadata_parses`), while an older one restores (a file corrupted or cut
  short) is reported as a warning and set aside, renamed
  to `<step>.unreadable`, so that training can save that step again. When
  none restores (e.g. every one was saved by another model), the newest
  one's error is raised and nothing is renamed.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  errors = []
  for step in steps:
    try:
      if not metadata_parses(manager.directory / str(step)):
        raise ValueError(
            f'checkpoint {os.fspath(manager.directory / str(step))} '
            'is corrupt: its metadata does not parse')
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


def file_part(text: str) -> str:
  """A split or dataset name as part of a file name: 'test[:50%]' ->
  'test_to50pct', 'test[50%:]' -> 'test_50pctto', 'shapes/tiny' ->
  'shapes-tiny', 'folder:/data/digits' -> 'folder-data-digits'."""
  text = re.sub(r'\[([^\]]*)\]', lambda m: '_' + m[1].replace(':', 'to'),
                text).replace('%', 'pct')
  return re.sub(r'[^A-Za-z0-9_+-]+', '-', text).strip('-')


def result_variant(config: ml_collections.ConfigDict, use_ema: bool,
                   dataset: str | None = None,
                   split: str | None = None,
                   overrides: dict | None = None) -> str:
  """'' for the run's own evaluation settings (its dataset, eval_split and
  EMA setting, no `overrides`: training's final evaluation,
  eval/step_<N>.json); otherwise '[<dataset>.]<split>.<ema|raw>' (the
  dataset only when it differs) and one part per override ({'data.rho':
  0.857} -> 'rho-0-857'), so that results of other settings go to their own
  eval/step_<N>.<variant>.json beside it, e.g. step_1000.test_to50pct.raw.json
  or step_1000.test.raw.rho-0-857.json."""
  dataset = dataset or config.data.dataset
  split = split or config.data.eval_split
  if ((dataset, split, use_ema) ==
      (config.data.dataset, config.data.eval_split,
       config.optim.ema_decay > 0)) and not overrides:
    return ''
  parts = [] if dataset == config.data.dataset else [file_part(dataset)]
  parts += [file_part(split), 'ema' if use_ema else 'raw']
  fields = {key.rpartition('.')[2]: value
            for key, value in (overrides or {}).items()}
  return '.'.join(parts + [file_part(f'{field}-{value}')
                           for field, value in sorted(fields.items())])


def eval_result_path(workdir: str, step: int,
                     variant: str = '') -> epath.Path:
  """WORKDIR/eval/step_<step>.json: the evaluation result of `step` with
  the run's own settings (training's final evaluation); with a `variant`
  (another split, EMA setting or dataset: `result_variant`),
  WORKDIR/eval/step_<step>.<variant>.json beside it."""
  name = f'step_{step}.{variant}.json' if variant else f'step_{step}.json'
  return epath.Path(workdir) / EVAL_SUBDIR / name
