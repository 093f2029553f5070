"""Evaluation: top-1, top-5 and loss over a whole split.

`evaluate_dataset` evaluates given variables (training's periodic and final
evaluations); `Evaluator` restores a workdir's checkpoints and evaluates
them, and `watch` evaluates each new one as it appears (the
`mobilenet_jax.evaluate` command). A step's result goes to
WORKDIR/eval/step_<N>.json = {"step", "top1", "top5", "loss",
"num_examples", "ema", "checkpoint"} for the run's own split, dataset and
EMA setting, and to WORKDIR/eval/step_<N>.<variant>.json
(`checkpoint.result_variant`, plus "dataset" and "split") for any other.
A step evaluated before with the same settings is not evaluated again: its
stored result is read back, unless `force`, which evaluates it again into a
new file, step_<N>[.<variant>].<k>.json (k = 2, 3, ...); nothing is
rewritten.
"""

import functools
import itertools
import json
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mobilenet_jax import checkpoint
from mobilenet_jax import config_check
from mobilenet_jax import data
from mobilenet_jax import models
from mobilenet_jax import parallel
from mobilenet_jax import state as state_lib
from mobilenet_jax import xla_options


def eval_step(variables, batch, *, model, num_classes, mean, std):
  """Sums (not means) over the batch's real examples: loss, top-1, top-5.
  The images are pixels (uint8), normalised here as in `train.train_step`."""
  logits = model.apply(
      variables, data.normalise(batch['image'], mean, std, model.dtype),
      train=False)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  k = min(5, num_classes)
  top_k = jax.lax.top_k(logits, k)[1]
  in_top_k = jnp.any(top_k == labels[:, None], axis=-1)
  top1 = top_k[:, 0] == labels
  return {'loss': jnp.sum(loss * mask), 'top1': jnp.sum(top1 * mask),
          'top5': jnp.sum(in_top_k * mask), 'num_examples': jnp.sum(mask)}


@functools.lru_cache(maxsize=None)
def jit_eval_step(model, num_classes: int, mesh, mean: tuple, std: tuple):
  """`eval_step` jitted over `mesh` (variables replicated, batch split),
  with the step options of the mesh's platform (`xla_options`); `mean` and
  `std` (tuples: `config.data`'s) normalise the images. One jitted
  function per (model, classes, mesh, mean, std), so that a run's
  evaluations compile once (Flax modules compare and hash by their
  fields)."""
  return jax.jit(
      functools.partial(eval_step, model=model, num_classes=num_classes,
                        mean=mean, std=std),
      in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
      out_shardings=parallel.replicated(mesh),
      compiler_options=xla_options.step_compiler_options(
          mesh.devices.flat[0].platform))


def evaluate_dataset(model, variables, data_config, *, global_batch_size: int,
                     resolution: int, num_classes: int, mesh) -> dict:
  """Evaluates `variables` on data_config.eval_split; every example once."""
  step = jit_eval_step(model, num_classes, mesh, tuple(data_config.mean),
                       tuple(data_config.std))
  totals = None
  for batch in data.create_eval_iterator(
      data_config, global_batch_size=global_batch_size, resolution=resolution):
    sums = step(variables, parallel.global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  n = float(totals['num_examples'])
  return {'top1': float(totals['top1']) / n, 'top5': float(totals['top5']) / n,
          'loss': float(totals['loss']) / n, 'num_examples': int(n)}


def write_result(workdir: str, result: dict, variant: str = '',
                 overwrite: bool = True) -> str:
  """Writes WORKDIR/eval/step_<N>[.<variant>].json (process 0 only; not
  over an existing file unless `overwrite`); returns its path."""
  path = checkpoint.eval_result_path(workdir, result['step'], variant)
  if jax.process_index() == 0:
    if not overwrite and path.exists():
      logging.info('%s exists: left as it is', path)
    else:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(result, indent=2) + '\n')
  return str(path)


def read_result(workdir: str, step: int, variant: str = '') -> dict | None:
  """WORKDIR/eval/step_<N>[.<variant>].json as `write_result` wrote it; None
  where there is none."""
  path = checkpoint.eval_result_path(workdir, step, variant)
  return json.loads(path.read_text()) if path.exists() else None


def describe(result: dict) -> str:
  """'top1 0.9520  top5 1.0000  loss 0.1234 (75 examples)'."""
  return (f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  loss "
          f"{result['loss']:.4f} ({result['num_examples']} examples)")


def evaluation_variables(state, use_ema: bool) -> dict:
  """{'params', 'batch_stats'} to evaluate: the state's EMA (a ConfigError if
  the run kept none) or its own variables."""
  if use_ema:
    if state.ema is None:
      raise config_check.ConfigError(
          'use_ema is true but this run kept no EMA weights '
          '(optim.ema_decay = 0)')
    return state_lib.unravel_variables(state.ema, state.params,
                                       state.batch_stats)
  return {'params': state.params, 'batch_stats': state.batch_stats}


# The config fields an evaluation may override (`Evaluator`'s `overrides`)
# and their types: they change how the images are prepared or batched, not
# the model.
EVAL_OVERRIDES = {'data.rho': float, 'data.base_resolution': int,
                  'data.eval_crop_fraction': float, 'data.antialias': bool,
                  'eval_batch_size': int}


class Evaluator:
  """Restores checkpoints of one workdir and evaluates them; `overrides`
  ({field: value} of EVAL_OVERRIDES: the resolution, crop fraction, batch)
  evaluate with other settings than the run's, into a result file of their
  own (`checkpoint.result_variant`)."""

  def __init__(self, workdir: str, use_ema: bool | None = None,
               dataset: str | None = None, split: str | None = None,
               overrides: dict | None = None):
    self.workdir = workdir
    overrides = dict(overrides or {})
    for key in overrides:
      config_check.one_of('an evaluation override', key, list(EVAL_OVERRIDES))
    self.config = checkpoint.load_config(workdir)
    self.config.update_from_flattened_dict(overrides)
    parallel.check_batch_size(self.config.eval_batch_size, 'eval_batch_size')
    self.use_ema = (self.config.optim.ema_decay > 0 if use_ema is None
                    else use_ema)
    self.data_config = ml_collections.ConfigDict(self.config.data.to_dict())
    num_classes = data.get_dataset_info(self.config.data).num_classes
    if dataset:
      self.data_config.dataset = dataset
    if split:
      self.data_config.eval_split = split
    self.mesh = parallel.create_mesh()
    self.resolution = models.input_resolution(
        self.config.data.rho, self.config.data.base_resolution)
    self.num_classes = num_classes
    self.model = state_lib.model_from_config(self.config.model, num_classes)
    self.abstract_state = state_lib.abstract_train_state(
        self.config, self.model, self.resolution, self.mesh)
    self.manager = checkpoint.create_manager(workdir, read_only=True)
    self.variant = checkpoint.result_variant(self.config, self.use_ema,
                                             dataset, split, overrides)

  def steps(self) -> list[int]:
    self.manager.reload()
    return list(self.manager.all_steps())

  def evaluate(self, step: int, force: bool = False) -> dict:
    """`step`'s result: the stored one where there is one (module
    docstring), else a new evaluation, written."""
    variant = self.variant
    stored = read_result(self.workdir, step, variant)
    if stored is not None and not force:
      logging.info('step %d was evaluated before: %s (--force evaluates it '
                   'again)', step,
                   checkpoint.eval_result_path(self.workdir, step, variant))
      return stored
    if stored is not None:  # force: the next free step_<N>.<variant>.<k>
      prefix = f'{variant}.' if variant else ''
      variant = next(f'{prefix}{k}' for k in itertools.count(2)
                     if read_result(self.workdir, step, f'{prefix}{k}') is None)
    state = checkpoint.restore(self.manager, step, self.abstract_state)
    metrics = evaluate_dataset(
        self.model, evaluation_variables(state, self.use_ema),
        self.data_config, global_batch_size=self.config.eval_batch_size,
        resolution=self.resolution, num_classes=self.num_classes,
        mesh=self.mesh)
    result = {'step': step, **metrics, 'ema': self.use_ema,
              'checkpoint': checkpoint.checkpoint_path(self.workdir, step)}
    if self.variant:
      result.update(dataset=self.data_config.dataset,
                    split=self.data_config.eval_split)
    path = write_result(self.workdir, result, variant, overwrite=False)
    logging.info('step %d: %s, written to %s', step, describe(result), path)
    return result


def watch(evaluator: Evaluator, poll_seconds: float = 30.0,
          timeout_seconds: float | None = None) -> list[dict]:
  """Evaluates each new checkpoint as it appears; returns after the final
  step (the config's num_train_steps) or `timeout_seconds` without one."""
  final_step = evaluator.config.num_train_steps
  done, results = set(), []
  last_new = time.monotonic()
  while True:
    new = [s for s in evaluator.steps() if s not in done]
    for step in new:
      results.append(evaluator.evaluate(step))
      logging.info('step %d: %s', step, results[-1])
      done.add(step)
      last_new = time.monotonic()
    if final_step in done:
      return results
    if (timeout_seconds is not None and
        time.monotonic() - last_new > timeout_seconds):
      raise TimeoutError(f'no new checkpoint in {evaluator.workdir} for '
                         f'{timeout_seconds:.0f}s')
    time.sleep(poll_seconds)
