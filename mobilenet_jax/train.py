"""The training loop: `train_and_evaluate(config, workdir)`.

One jit-compiled `train_step` over a mesh of every device (batch split over
`data`, state replicated and donated); host-local uint8 input slices become
global arrays, normalised inside the step; metrics are fetched only at log
steps; orbax checkpoints make a re-run of the same command resume where it
stopped (SIGTERM saves and exits).
"""

import collections
import functools
import signal
import threading
import time

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mobilenet_jax import checkpoint
from mobilenet_jax import config_check
from mobilenet_jax import data
from mobilenet_jax import evaluation
from mobilenet_jax import models
from mobilenet_jax import optim
from mobilenet_jax import parallel
from mobilenet_jax import pretrained
from mobilenet_jax import provenance
from mobilenet_jax import state as state_lib
from mobilenet_jax import writers
from mobilenet_jax import xla_options


def train_step(state: state_lib.TrainState, batch: dict, *, model, tx,
               schedule, num_classes: int, label_smoothing: float,
               ema_decay: float, frozen_backbone: bool, mean: tuple,
               std: tuple):
  """One SGD step on a global batch; returns the new state and metrics.

  `batch['image']` holds pixels in [0, 255] (uint8 from the input
  pipeline), normalised here with `mean` and `std` (`data.normalise`) into
  the model's compute dtype. With a frozen backbone the model runs in
  inference mode (BatchNorm uses and keeps its running statistics), so only
  the top layers change.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  variables = {'batch_stats': state.batch_stats}
  images = data.normalise(batch['image'], mean, std, model.dtype)

  def loss_fn(params):
    if frozen_backbone:
      logits = model.apply({'params': params, **variables}, images,
                           train=False)
      batch_stats = state.batch_stats
    else:
      logits, updates = model.apply(
          {'params': params, **variables}, images, train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      batch_stats = updates['batch_stats']
    loss = optim.cross_entropy_loss(logits, batch['label'], num_classes,
                                    label_smoothing)
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema
  if ema is not None:
    ema = optim.ema_update(ema, state_lib.ravel_variables(params, batch_stats),
                           optim.ema_decay_at(state.step, ema_decay))
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats,
      opt_state=opt_state, ema=ema)
  metrics = {
      'loss': loss,
      'top1': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'learning_rate': schedule(state.step),
  }
  return new_state, metrics


def jit_train_step(config: ml_collections.ConfigDict, model, params, mesh):
  """`train_step` for a resolved `config`, jitted over `mesh`: the state
  replicated and donated, the batch split over the data axis, compiled
  with the step options of the mesh's platform (`xla_options`). `params`
  may be shapes only."""
  tx, schedule = state_lib.create_optimizer(config, params)
  return jax.jit(
      functools.partial(
          train_step, model=model, tx=tx, schedule=schedule,
          num_classes=config.num_classes,
          label_smoothing=config.optim.label_smoothing,
          ema_decay=config.optim.ema_decay,
          frozen_backbone=config.freeze_backbone,
          mean=tuple(config.data.mean), std=tuple(config.data.std)),
      in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
      out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
      donate_argnums=0,
      compiler_options=xla_options.step_compiler_options(
          mesh.devices.flat[0].platform))


def resolve_config(config: ml_collections.ConfigDict,
                   info: data.DatasetInfo) -> ml_collections.ConfigDict:
  """Checks the config and fills in what follows from it and the data, after
  every override: `num_classes` (the dataset's), `steps_per_epoch`,
  `num_train_steps` (from `num_epochs` if not set), `eval_batch_size` (the
  batch size if not set) and `schedule`, the learning rate, warm-up and
  decay steps the run uses (`optim.resolve_schedule`: a base rate scaled to
  the global batch, epochs counted in this batch's steps); the `optim`
  fields stay as given. A warm-up not shorter than the run is clamped to a
  tenth of it (with a warning). Fails before compiling (the values
  `config_check` checks first, in `main` before the heavy imports)."""
  config_check.check_config(config)
  config = ml_collections.ConfigDict(config.to_dict())
  config.num_classes = info.num_classes
  parallel.check_batch_size(config.batch_size, 'batch_size')
  if not config.get('eval_batch_size'):
    config.eval_batch_size = config.batch_size
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  train_examples = info.num_examples[config.data.train_split]
  config.steps_per_epoch = max(1, train_examples // config.batch_size)
  if config.get('num_train_steps', 0) <= 0:
    if config.get('num_epochs', 0) <= 0:
      raise config_check.ConfigError('set num_train_steps or num_epochs (> 0)')
    config.num_train_steps = int(config.num_epochs * config.steps_per_epoch)
  schedule = state_lib.resolve_schedule(config)
  if schedule['warmup_steps'] >= config.num_train_steps:
    clamped = config.num_train_steps // 10
    logging.warning('the warm-up (%d steps) is not shorter than the run '
                    '(num_train_steps=%d): clamped to %d steps, a tenth of '
                    'the run', schedule['warmup_steps'],
                    config.num_train_steps, clamped)
    config.optim.warmup_steps, config.optim.warmup_epochs = clamped, None
    schedule = state_lib.resolve_schedule(config)
  config.schedule = schedule
  return config


def describe_schedule(config: ml_collections.ConfigDict) -> str:
  """'learning rate 0.064 (0.016 x 1024 / 256), warm-up 1560 steps (5
  epochs), 1251 steps per epoch, 437842 steps' for a resolved config."""
  o, s = config.optim, config.schedule
  scaling = (f' ({o.learning_rate:g} x {config.batch_size} / '
             f'{o.base_batch_size})' if o.get('base_batch_size') else '')
  epochs = (f' ({o.warmup_epochs:g} epochs)'
            if o.get('warmup_epochs') is not None
            else '')
  return (f'learning rate {s.learning_rate:.6g}{scaling}, warm-up '
          f'{s.warmup_steps} steps{epochs}, {config.steps_per_epoch} steps '
          f'per epoch, {config.num_train_steps} steps')


def _transfer(pretrained: dict, fresh: dict, fresh_names=frozenset()) -> dict:
  """The pretrained variables, but the fresh initialisation for the
  variables named in `fresh_names` ('params.classifier.kernel', ...:
  `pretrained.plan_transfer`'s new classifier)."""
  flat_new = traverse_util.flatten_dict(fresh)
  flat_old = traverse_util.flatten_dict(pretrained)
  missing = [k for k in flat_new if k not in flat_old
             and '.'.join(k) not in fresh_names]
  if missing:
    raise config_check.ConfigError(
        f'init_from lacks {len(missing)} variables of this model '
        f'(first: {"/".join(missing[0])}); is model.name right?')
  merged = {}
  for key, value in flat_new.items():
    if '.'.join(key) in fresh_names:
      logging.info('init_from: new %s %s', '/'.join(key), value.shape)
    else:
      value = jnp.asarray(flat_old[key], value.dtype)
    merged[key] = value
  if not fresh_names:
    logging.info('init_from: every variable loaded, the classifier included '
                 '(same classes, and the same dataset or init_head=true)')
  return traverse_util.unflatten_dict(merged)


class _Preemption:
  """Remembers a SIGTERM (a preempted VM) or a Ctrl-C (SIGINT) until the
  loop can act on it: save a checkpoint at the next step and exit 0. A
  second Ctrl-C aborts at once (KeyboardInterrupt), saying whether that
  checkpoint was committed (`saved_step`).

  In a single process only. Under `jax.distributed`, JAX's preemption
  service catches SIGTERM and every process learns of it at the same step
  (`manager.reached_preemption`); a handler here would replace JAX's, and
  only the process that got the signal would stop and save, the others
  waiting for it in the next step's collectives.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.saved_step = None  # set once the requested checkpoint is committed
    self._previous = {}
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = {s: signal.signal(s, self._handle)
                        for s in self.SIGNALS}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      if self.saved_step is not None:
        raise KeyboardInterrupt(f'{name} again: exiting; the checkpoint of '
                                f'step {self.saved_step} is saved')
      raise KeyboardInterrupt(f'{name} again: aborted without saving')
    logging.warning('%s: saving a checkpoint at the next step and exiting%s',
                    name, ' (Ctrl-C again aborts)'
                    if signum == signal.SIGINT else '')
    self.requested = True

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict:
  """Trains (or resumes) in `workdir`; returns the final evaluation result
  (also written to WORKDIR/eval/step_<N>.json). Returns early with
  {'preempted': True, 'step': N} after a SIGTERM or a Ctrl-C. With several
  processes, a workdir they do not share is a ConfigError."""
  parallel.check_shared_workdir(workdir)
  info = data.get_dataset_info(config.data)
  config = resolve_config(config, info)
  logging.info('%s', describe_schedule(config))
  resolution = models.input_resolution(config.data.rho,
                                       config.data.base_resolution)
  mesh = parallel.create_mesh()
  model = state_lib.model_from_config(config.model, info.num_classes)
  use_ema = config.optim.ema_decay > 0

  rng = jax.random.PRNGKey(config.seed)
  abstract_state = state_lib.abstract_train_state(config, model, resolution,
                                                  mesh)
  fresh_names = frozenset()
  if config.init_from and not checkpoint.saved_steps(workdir):
    # Before anything is created or compiled: does the source fit?
    fresh_names = pretrained.plan_transfer(
        config.init_from, {'params': abstract_state.params,
                           'batch_stats': abstract_state.batch_stats},
        config.data.dataset, config.get('init_head', False),
        {'padding': model.padding, 'bn_epsilon': model.bn_epsilon})
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)
  if manager.latest_step() is not None:
    # Another model's or optimizer's checkpoint: one line, in seconds.
    checkpoint.check_fits(manager, manager.latest_step(), abstract_state,
                          config)
    finished = (manager.latest_step() >= config.num_train_steps and
                evaluation.read_result(workdir, config.num_train_steps))
    if finished:  # a rerun of a finished run: nothing to do, nothing written
      logging.info('already finished at step %d: %s (%s)',
                   config.num_train_steps, evaluation.describe(finished),
                   checkpoint.eval_result_path(workdir,
                                               config.num_train_steps))
      checkpoint.close(manager)
      return finished
    start_step, state = checkpoint.restore_latest(manager, abstract_state)
    logging.info('Resuming from %s', checkpoint.checkpoint_path(workdir,
                                                                start_step))
  else:
    start_step = 0
    state = _initial_state(config, model, rng, resolution, mesh, use_ema,
                           abstract_state.params, fresh_names)
  # Only now, with the config checked and the state restored or created.
  checkpoint.save_config(config, workdir)
  provenance.record(workdir)

  step_fn = jit_train_step(config, model, abstract_state.params, mesh)

  batches = device_prefetch(data.create_train_iterator(
      config.data, global_batch_size=config.batch_size,
      resolution=resolution, seed=config.seed, start_step=start_step), mesh)
  writer = writers.MetricsWriter(workdir)
  preemption = _Preemption()
  total = config.num_train_steps
  pending, window_start, window_steps = [], time.perf_counter(), 0
  # The log window's wall time and the part of it spent in next(batches).
  input_start, input_wait = window_start, 0.0

  def run_eval(step):
    variables = evaluation.evaluation_variables(state, use_ema)
    metrics = evaluation.evaluate_dataset(
        model, variables, config.data, global_batch_size=config.eval_batch_size,
        resolution=resolution, num_classes=info.num_classes, mesh=mesh)
    writer.write(step, metrics, prefix='eval')
    logging.info('eval at step %d: %s', step, evaluation.describe(metrics))
    return metrics

  try:
    for step in range(start_step + 1, total + 1):
      waited_from = time.perf_counter()
      batch = next(batches)
      input_wait += time.perf_counter() - waited_from
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      if step == start_step + 1:
        # The first step compiles: time it apart, so that img/s and the ETA
        # count only steps that ran compiled.
        jax.block_until_ready(state)
        logging.info('step %d compiled and ran in %.1f s', step,
                     time.perf_counter() - window_start)
        window_start = time.perf_counter()
      else:
        window_steps += 1
      is_last = step == total
      preempted = preemption.requested or manager.reached_preemption(step)
      saves = (_every(step, config.checkpoint_every_steps) or is_last
               or preempted)
      if _every(step, config.log_every_steps) or is_last or saves:
        stacked = jax.tree.map(lambda *x: np.stack(x),
                               *jax.device_get(pending))
        _check_finite(stacked, step, manager.latest_step())
      if _every(step, config.log_every_steps) or is_last:
        means = {k: float(np.mean(v)) for k, v in stacked.items()}
        means['input_wait'] = input_wait / (time.perf_counter() - input_start)
        if means['input_wait'] > INPUT_WAIT_WARNING:
          logging.warning('steps %d-%d waited for the input pipeline %.0f%% '
                          'of the time: input-bound (docs/performance.md, '
                          'bench --data)', step - len(pending) + 1, step,
                          100 * means['input_wait'])
        timing = {}
        if window_steps:
          elapsed = time.perf_counter() - window_start
          timing = {'img_per_sec': window_steps * config.batch_size / elapsed,
                    'seconds_left': (total - step) * elapsed / window_steps}
          means['img_per_sec'] = timing['img_per_sec']
        writer.write(step, means)
        writers.console_line(step, total, means, **timing)
        pending, window_start, window_steps = [], time.perf_counter(), 0
        input_start, input_wait = window_start, 0.0
      if saves:
        checkpoint.save(manager, step, state)
      if preempted:
        checkpoint.wait_until_saved(manager)
        preemption.saved_step = step
        logging.info('stopped at step %d: its checkpoint is saved (%s); the '
                     'same command resumes', step,
                     checkpoint.checkpoint_path(workdir, step))
        return {'preempted': True, 'step': step}
      if _every(step, config.eval_every_steps) and not is_last:
        run_eval(step)
    checkpoint.wait_until_saved(manager)
    result = {'step': total, **run_eval(total), 'ema': use_ema,
              'checkpoint': checkpoint.checkpoint_path(workdir, total)}
    path = evaluation.write_result(workdir, result)
    logging.info('Final evaluation written to %s', path)
    return result
  finally:
    preemption.restore()
    # tf.data's destructor of the training input waits, GIL released, for
    # its autotuning thread's next wake-up: up to a minute, in a third of
    # the runs (docs/performance.md). Closed in a thread of its own, it no
    # longer holds up the return (and a command's exit, main._exit_now).
    threading.Thread(target=batches.close, name='close-train-input').start()
    try:
      checkpoint.close(manager)  # a failed save: CheckpointWriteError
    finally:
      writer.close()


# A log window whose loop waited longer than this fraction of its wall time
# for the next batch logs a warning.
INPUT_WAIT_WARNING = 0.1


def device_prefetch(host_batches, mesh, size: int = 2):
  """The host batches as global arrays split over `data`, each put on the
  devices `size` batches before the loop takes it, so that the host-to-
  device copy overlaps the steps (flax's `prefetch_to_device` idea, with
  the batch sharding in place of pmap's device list)."""
  queue = collections.deque()
  for local_batch in host_batches:
    queue.append(parallel.global_batch(local_batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue


class NonFiniteMetricError(ValueError):
  """A training metric became NaN or infinite: the run stops."""


def _check_finite(metrics: dict, step: int, last_saved: int | None) -> None:
  """Raises NonFiniteMetricError naming the first non-finite metric of the
  steps ending at `step` (`metrics`: one value per step), so that no
  checkpoint of a diverged state is written."""
  for name, values in metrics.items():
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      first = step - len(values) + 1 + int(bad[0])
      kept = ('no checkpoint was written' if last_saved is None
              else f'the last checkpoint, step {last_saved}, is kept')
      raise NonFiniteMetricError(
          f'{name} is {values[bad[0]]} at step {first}: training stopped; '
          f'{kept}')


def _every(step: int, period: int) -> bool:
  return period > 0 and step % period == 0


def _initial_state(config, model, rng, resolution, mesh, use_ema, params,
                   fresh_names=frozenset()):
  """A fresh TrainState, or one starting from `init_from` (transfer, with
  the variables in `fresh_names` initialised anew); built in one compiled
  call (initialisers are slow to run op by op)."""
  tx, _ = state_lib.create_optimizer(config, params)
  variables = None
  if config.init_from:
    init_rng = jax.random.split(rng)[0]  # as create_train_state's own init
    fresh = jax.jit(state_lib.init_variables, static_argnums=(0, 2))(
        model, init_rng, resolution)
    variables = _transfer(pretrained.load_pretrained(config.init_from),
                          fresh, fresh_names)
  create = jax.jit(
      lambda rng, v: state_lib.create_train_state(
          model, tx, rng, resolution, use_ema, variables=v),
      out_shardings=parallel.replicated(mesh))
  return create(rng, variables)
