"""Optimizers, learning-rate schedules, weight-decay masks, EMA and the loss.

Everything is driven by the `optim` ConfigDict; configs/default.py sets every
field. Fields:

  name             'sgd' | 'rmsprop_tf' | 'adamw'.
  learning_rate    peak learning rate: for the global batch, or, with
                   `base_batch_size`, for a batch of that size.
  base_batch_size  None, or the batch `learning_rate` is given for: the run
                   uses learning_rate * global batch / base_batch_size (the
                   linear scaling rule, Goyal et al. 2017, section 2.1).
  schedule         'cosine' | 'exponential' | 'constant'.
  warmup_steps     linear warm-up from 0 to the peak, in steps ...
  warmup_epochs    ... or in epochs: int(warmup_epochs * steps_per_epoch)
                   steps. Exactly one of the two is set (not None).
  weight_decay     sgd / rmsprop_tf: coupled L2, grad += wd * param
                   (TF recipes' `wd * sum(tf.nn.l2_loss(w))`; Keras'
                   `regularizers.l2(c)` is wd = 2c). adamw: decoupled,
                   param -= lr * wd * param (optax.adamw).
  decay_depthwise  also decay depthwise kernels (see `weight_decay_mask`);
                   BN scale/bias and biases never.
  label_smoothing  in [0, 1).
  ema_decay        EMA of params and batch_stats, in [0, 1); 0 disables (the
                   training loop applies `ema_update` with the warmed-up
                   `ema_decay_at(step, ema_decay)`).
  momentum         sgd momentum / rmsprop_tf momentum; 0 disables.
  nesterov         Nesterov momentum (sgd only).
  decay_rate       exponential: lr * decay_rate ** floor(step / n) ...
  decay_epochs     ... with n = int(decay_epochs * steps_per_epoch).

The fields are resolved into steps and a rate (`resolve_schedule`) inside the
training loop, from the final global batch and the dataset's size, so that an
override of the batch size scales the learning rate and the warm-up.
  rmsprop_decay    rmsprop_tf: decay of the squared-gradient average.
  rmsprop_epsilon  rmsprop_tf: epsilon inside the square root (TF Model
                   Garden's MobileNet recipes: 0.002; the MnasNet/EfficientNet
                   TPU recipes: 0.001).
  adam_b1          adamw first-moment decay.
  adam_b2          adamw second-moment decay.
  adam_epsilon     adamw epsilon.
  grad_clip_norm   clip the loss gradient to this global norm; 0 or None
                   disables.
"""

import numbers

import jax
import jax.numpy as jnp
import optax

from mobilenet_jax import config_check

# The allowed values live in config_check (checked before the heavy imports).
OPTIMIZERS = config_check.OPTIMIZERS
SCHEDULES = config_check.SCHEDULES
FIELDS = config_check.OPTIM_FIELDS  # every `optim` field (documented above)
# Raises ConfigError naming the first missing or invalid `optim` field.
check_optim_config = config_check.check_optim_config


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral)  # numpy integers included


def _with_warmup(schedule: optax.Schedule, peak: float,
                 warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_steps`, then `schedule(step)` of the
  global step (TF TPU recipes: the decay does not restart after warm-up)."""
  if warmup_steps == 0:
    return schedule

  def warmed_up(step):
    return jnp.where(step < warmup_steps, peak * step / warmup_steps,
                     schedule(step))
  return warmed_up


def resolve_schedule(optim_config, *, num_train_steps: int,
                     steps_per_epoch: int | None = None,
                     batch_size: int | None = None) -> dict:
  """The schedule's numbers for a run of `num_train_steps` steps of global
  batch `batch_size` (`steps_per_epoch` of them per epoch):

    learning_rate  learning_rate * batch_size / base_batch_size, or
                   learning_rate when base_batch_size is None;
    warmup_steps   warmup_steps, or int(warmup_epochs * steps_per_epoch);
    decay_steps    exponential: int(decay_epochs * steps_per_epoch) (at
                   least 1), the staircase period; None otherwise.

  Whole steps per epoch (TF Model Garden's rule: its MobileNet recipes warm
  up for 5 * (1281167 // 4096) = 1560 steps at batch 4096).
  """
  check_optim_config(optim_config)
  c = optim_config
  if not (_is_int(num_train_steps) and num_train_steps > 0):
    raise config_check.ConfigError(
        f'num_train_steps must be a positive int, got {num_train_steps!r}')
  # Absent in configs saved by earlier versions: config_check.
  base_batch_size = c.get('base_batch_size')
  warmup_epochs = c.get('warmup_epochs')
  needs_epochs = warmup_epochs is not None or c.schedule == 'exponential'
  if needs_epochs and not (_is_int(steps_per_epoch) and steps_per_epoch > 0):
    raise ValueError('steps_per_epoch must be a positive int for '
                     "optim.warmup_epochs or optim.schedule='exponential', "
                     f'got {steps_per_epoch!r}')
  lr = c.learning_rate
  if base_batch_size is not None:
    if not (_is_int(batch_size) and batch_size > 0):
      raise ValueError('batch_size must be a positive int with '
                       f'optim.base_batch_size, got {batch_size!r}')
    lr = c.learning_rate * batch_size / base_batch_size
  warmup = c.warmup_steps
  if warmup_epochs is not None:
    warmup = int(warmup_epochs * steps_per_epoch)
  decay_steps = None
  if c.schedule == 'exponential':
    decay_steps = max(1, int(c.decay_epochs * steps_per_epoch))
  return {'learning_rate': lr, 'warmup_steps': warmup,
          'decay_steps': decay_steps}


def create_learning_rate_schedule(optim_config, num_train_steps: int,
                                  steps_per_epoch: int | None = None,
                                  batch_size: int | None = None
                                  ) -> optax.Schedule:
  """The learning rate as a function of the step (0-based), with the peak
  lr and the warm-up w of `resolve_schedule`.

  All schedules warm up linearly, lr * step / w, then:
    cosine:      lr * (1 + cos(pi * (step - w) / (T - w))) / 2, 0 from step
                 T = num_train_steps on (Loshchilov & Hutter, SGDR, eq. 5
                 without restarts); the cosine starts after the warm-up.
    exponential: lr * decay_rate ** floor(step / n), n = decay_steps
                 (staircase: the papers' step decay every few epochs),
                 counted from step 0, not from the end of the warm-up, as
                 TF's `exponential_decay(global_step)` is.
    constant:    lr.
  """
  resolved = resolve_schedule(optim_config, num_train_steps=num_train_steps,
                              steps_per_epoch=steps_per_epoch,
                              batch_size=batch_size)
  lr, warmup = resolved['learning_rate'], resolved['warmup_steps']
  if warmup >= num_train_steps:
    raise config_check.ConfigError(
        f'the warm-up ({warmup} steps) must be shorter than '
        f'num_train_steps ({num_train_steps})')
  if optim_config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=num_train_steps, end_value=0.0)
  if optim_config.schedule == 'exponential':
    decay = optax.exponential_decay(
        init_value=lr, transition_steps=resolved['decay_steps'],
        decay_rate=optim_config.decay_rate, staircase=True)
    return _with_warmup(decay, lr, warmup)
  return _with_warmup(optax.constant_schedule(lr), lr, warmup)


def _is_kernel(path, leaf) -> bool:
  return getattr(path[-1], 'key', None) == 'kernel' and len(leaf.shape) >= 2


def _is_depthwise_kernel(path, leaf) -> bool:
  """A (k, k, 1, C) kernel: a depthwise convolution's (`nn.Conv` with
  `feature_group_count` = C).

  A full convolution with one input channel (a grayscale stem) has the same
  shape and is treated as depthwise too.
  """
  return _is_kernel(path, leaf) and len(leaf.shape) == 4 and leaf.shape[2] == 1


def weight_decay_mask(params, *, decay_depthwise: bool):
  """True for the leaves weight decay applies to: conv and dense kernels.

  Never BatchNorm scale/bias or biases; depthwise kernels only with
  `decay_depthwise` (MobileNet V1 paper, section 3.2: very little or no weight
  decay on the depthwise filters, which have so few parameters). Kernels are
  the leaves named 'kernel' with 2 or more dimensions. `params` may be arrays
  or ShapeDtypeStructs.
  """
  def decays(path, leaf):
    if decay_depthwise:
      return _is_kernel(path, leaf)
    return _is_kernel(path, leaf) and not _is_depthwise_kernel(path, leaf)
  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(optim_config, num_train_steps: int, params, *,
                     steps_per_epoch: int | None = None,
                     batch_size: int | None = None, trainable_mask=None
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax optimizer of `optim_config` and its learning-rate schedule.

  Order per step: clip the loss gradient (`grad_clip_norm`), add the coupled
  L2 term (sgd, rmsprop_tf), then the optimizer's update.

    sgd:        v = momentum * v + g; update = -lr * (g + momentum * v) with
                nesterov, else -lr * v (optax.sgd).
    rmsprop_tf: TensorFlow's RMSProp (tf.compat.v1.train.RMSPropOptimizer,
                the MobileNet TPU recipes): ms = rho * ms + (1 - rho) * g^2
                with ms initialised to 1, mom = momentum * mom +
                lr * g / sqrt(ms + eps) (epsilon inside the square root,
                learning rate inside the momentum), update = -mom.
    adamw:      optax.adamw with the weight-decay mask.

  Args:
    optim_config: the `optim` ConfigDict (see the module docstring).
    num_train_steps: total number of training steps.
    params: the parameter pytree (arrays or ShapeDtypeStructs), for the masks.
    steps_per_epoch: needed by the exponential schedule and warmup_epochs.
    batch_size: the global batch; needed with optim.base_batch_size.
    trainable_mask: optional pytree of bools like `params`; False leaves are
      frozen: their updates are zero and they get no optimizer state.
  """
  schedule = create_learning_rate_schedule(optim_config, num_train_steps,
                                           steps_per_epoch, batch_size)
  c = optim_config
  decay_mask = weight_decay_mask(params, decay_depthwise=c.decay_depthwise)
  decay = (optax.add_decayed_weights(c.weight_decay, decay_mask)
           if c.weight_decay > 0 else optax.identity())
  momentum = c.momentum or None
  # The stateful parts run on one flat vector (optax.flatten): per-leaf
  # state costs a small XLA kernel per statistic and parameter (262 more
  # for V2 with rmsprop_tf), each adding to the train step's compile time.
  if c.name == 'sgd':
    tx = optax.chain(decay, optax.flatten(optax.sgd(
        schedule, momentum=momentum, nesterov=c.nesterov)))
  elif c.name == 'rmsprop_tf':
    tx = optax.chain(decay, optax.flatten(optax.rmsprop(
        schedule, decay=c.rmsprop_decay, eps=c.rmsprop_epsilon,
        initial_scale=1.0, eps_in_sqrt=True, momentum=momentum)))
  else:  # optax.adamw's chain, with its masked decay outside the flat part.
    tx = optax.chain(
        optax.flatten(optax.scale_by_adam(
            b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_epsilon)),
        decay, optax.scale_by_learning_rate(schedule))
  if c.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), tx)
  if trainable_mask is not None:
    labels = jax.tree.map(lambda t: 'trainable' if t else 'frozen',
                          trainable_mask)
    tx = optax.multi_transform(
        {'trainable': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, schedule


def ema_decay_at(step, decay: float, warmup: bool = True):
  """The EMA decay at `step` (0-based count of updates so far).

  With `warmup`, TF's `ExponentialMovingAverage(num_updates=step)`:
  min(decay, (1 + step) / (10 + step)), so early averages are not dominated
  by the random initialisation. Traceable (step may be a jax array).
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay):
  """ema = decay * ema + (1 - decay) * params, leaf by leaf (any pytree; the
  train step's is one vector, `state.ravel_variables`); keeps the EMA's
  dtypes."""
  return jax.tree.map(
      lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype),
      ema_params, params)


def cross_entropy_loss(logits, labels, num_classes: int,
                       label_smoothing: float = 0.0):
  """Mean softmax cross entropy against smoothed one-hot targets, float32.

  Targets (1 - eps) * onehot(y) + eps / K (Szegedy et al., Rethinking the
  Inception Architecture, section 7), so per example
  -(1 - eps) * log p_y - eps / K * sum_k log p_k.
  """
  config_check.check_unit_interval('label_smoothing', label_smoothing)
  if logits.shape[-1] != num_classes:
    raise ValueError(f'logits must have num_classes={num_classes} columns, '
                     f'got shape {logits.shape}')
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes),
                                label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                              targets))
