"""Checks a training config's values in a fraction of a second: no jax,
TensorFlow or optax here (stdlib, `specs` and duck-typed ConfigDicts only),
so that `main` reports a bad value before the heavy imports.

The allowed values of every enum field live here and nowhere else: the
modules that use them (`models`, `ops`, `optim`) import these lists.
What needs the data (split names, class counts, dataset sizes) is checked
later, by the data pipeline and `train.resolve_config`.
"""

import numbers

from mobilenet_jax import specs

# model.name: the registry (models.REGISTRY is specs.ARCHITECTURES).
MODEL_NAMES = tuple(sorted(specs.ARCHITECTURES))
# model.ops: 'auto' and the op sets of `mobilenet_jax.ops`.
OP_SET_NAMES = ('auto', 'reference', 'cpu')
# model.padding: TensorFlow's 'SAME' (the extra pixel after, on stride 2) or
# PyTorch's k // 2 on both sides (timm's models); see `layers.conv_padding`.
PADDINGS = ('same', 'symmetric')
# model.dtype: the compute dtypes (parameters stay float32).
DTYPES = ('float32', 'bfloat16', 'float16')
# The smallest input side the models accept.
MIN_RESOLUTION = 32


class ConfigError(ValueError):
  """A user's mistake (a config value, a flag, a path that is not what the
  command needs), said in one line that names the field and what it allows:
  commands print it as `error: ...` and exit with status 2 (`cli`). Any
  other exception is a bug and keeps its traceback."""

OPTIMIZERS = ('adamw', 'rmsprop_tf', 'sgd')
SCHEDULES = ('constant', 'cosine', 'exponential')
# Every `optim` field (optim.py's docstring documents each).
OPTIM_FIELDS = ('name', 'learning_rate', 'base_batch_size', 'schedule',
                'warmup_steps', 'warmup_epochs', 'weight_decay', 'decay_depthwise', 'label_smoothing',
                'ema_decay', 'momentum', 'nesterov', 'decay_rate',
                'decay_epochs', 'rmsprop_decay', 'rmsprop_epsilon', 'adam_b1',
                'adam_b2', 'adam_epsilon', 'grad_clip_norm')
# Fields that configs saved by earlier versions (config.json of an old
# workdir) lack; absent reads as None: an absolute learning rate, the
# warm-up in steps.
OPTIM_FIELDS_ADDED_LATER = ('base_batch_size', 'warmup_epochs')


def one_of(field: str, value, allowed) -> None:
  """A ConfigError naming `field` and its allowed values unless `value` is
  one of them."""
  if value not in allowed:
    raise ConfigError(f'{field} must be one of {list(allowed)}, got {value!r}')


def is_int(value) -> bool:
  """An integer (numpy's included), not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_unit_interval(field: str, value) -> None:
  try:
    inside = not isinstance(value, bool) and 0 <= value < 1
  except TypeError:  # not a number
    inside = False
  if not inside:
    raise ConfigError(f'{field} must be in [0, 1), got {value!r}')


def check_alpha_expansion(name: str, alpha, expansion) -> None:
  """alpha > 0; expansion None, or > 0 for a model that has expansions."""
  if not (_is_number(alpha) and alpha > 0):
    raise ConfigError(f'alpha must be > 0, got {alpha!r}')
  if expansion is not None:
    if not specs.ARCHITECTURES[name].has_expansion:
      raise ConfigError(
          f'expansion must be None for {name}: it has no expansion layers '
          f'(got {expansion!r})')
    if not (_is_number(expansion) and expansion > 0):
      raise ConfigError(f'expansion must be > 0, got {expansion!r}')


def check_optim_config(c) -> None:
  """Raises ConfigError naming the first missing or invalid `optim` field."""
  for field in OPTIM_FIELDS:
    if field not in c and field not in OPTIM_FIELDS_ADDED_LATER:
      raise ConfigError(
          f'optim.{field} is not set (configs/default.py lists '
          'every optim field)')
  one_of('optim.name', c.name, OPTIMIZERS)
  one_of('optim.schedule', c.schedule, SCHEDULES)
  for field in ('learning_rate', 'weight_decay'):
    if not getattr(c, field) >= 0:
      raise ConfigError(
          f'optim.{field} must be >= 0, got {getattr(c, field)!r}')
  base_batch_size = c.get('base_batch_size')
  if base_batch_size is not None and not (is_int(base_batch_size)
                                          and base_batch_size > 0):
    raise ConfigError(f'optim.base_batch_size must be an int > 0 or None, got '
                      f'{base_batch_size!r}')
  if c.warmup_steps is not None and not (is_int(c.warmup_steps)
                                         and c.warmup_steps >= 0):
    raise ConfigError(f'optim.warmup_steps must be an int >= 0 or None, got '
                      f'{c.warmup_steps!r}')
  warmup_epochs = c.get('warmup_epochs')
  if warmup_epochs is not None and not (_is_number(warmup_epochs)
                                        and warmup_epochs >= 0):
    raise ConfigError(f'optim.warmup_epochs must be >= 0 or None, got '
                      f'{warmup_epochs!r}')
  if (c.warmup_steps is None) == (warmup_epochs is None):
    raise ConfigError(
        'set exactly one of optim.warmup_steps and optim.warmup_epochs, got '
        f'{c.warmup_steps!r} and {warmup_epochs!r} (a recipe that gives '
        'the warm-up in epochs takes --config.optim.warmup_epochs)')
  for field in ('label_smoothing', 'ema_decay', 'momentum', 'rmsprop_decay',
                'adam_b1', 'adam_b2'):
    check_unit_interval(f'optim.{field}', getattr(c, field))
  for field in ('decay_rate', 'decay_epochs', 'rmsprop_epsilon',
                'adam_epsilon'):
    if not getattr(c, field) > 0:
      raise ConfigError(f'optim.{field} must be > 0, got {getattr(c, field)!r}')
  if c.grad_clip_norm is not None and not c.grad_clip_norm >= 0:
    raise ConfigError(
        f'optim.grad_clip_norm must be >= 0 or None, got {c.grad_clip_norm!r}')


def check_model_config(m) -> None:
  """The `model` fields: name, ops, padding and dtype among their allowed
  values, alpha, expansion, dropout_rate, bn_momentum and bn_epsilon in
  range."""
  one_of('model.name', m.name, MODEL_NAMES)
  one_of('model.ops', m.get('ops', 'auto'), OP_SET_NAMES)
  one_of('model.padding', m.get('padding', 'same'), PADDINGS)
  one_of('model.dtype', m.dtype, DTYPES)
  one_of('model.float32_weight_grads', m.get('float32_weight_grads', True),
         (True, False))
  try:
    check_alpha_expansion(m.name, m.alpha, m.get('expansion'))
  except ConfigError as e:
    raise ConfigError(f'model.{e}') from None
  check_unit_interval('model.dropout_rate', m.dropout_rate)
  if m.get('bn_momentum') is not None:
    check_unit_interval('model.bn_momentum', m.bn_momentum)
  epsilon = m.get('bn_epsilon', 1e-3)
  if not (_is_number(epsilon) and epsilon > 0):
    raise ConfigError(f'model.bn_epsilon must be > 0, got {epsilon!r}')


def check_config(config) -> None:
  """Raises a one-line ConfigError naming the first field of a training
  config (a ConfigDict as configs/default.py builds it) whose value is not
  allowed, e.g. "optim.name must be one of ['adamw', 'rmsprop_tf', 'sgd'],
  got 'adamx'"."""
  check_model_config(config.model)
  check_optim_config(config.optim)
  d = config.data
  if not (_is_number(d.rho) and d.rho > 0):
    raise ConfigError(f'data.rho must be > 0, got {d.rho!r}')
  if not is_int(d.base_resolution):
    raise ConfigError(
        f'data.base_resolution must be an int, got '
        f'{d.base_resolution!r}')
  if round(d.rho * d.base_resolution) < MIN_RESOLUTION:
    raise ConfigError(
        f'data.rho * data.base_resolution must be >= '
        f'{MIN_RESOLUTION}, got {d.rho} * {d.base_resolution}')
  one_of('data.cache', d.get('cache'), (None, True, False))
  one_of('data.random_flip', d.get('random_flip', True), (True, False))
  one_of('data.antialias', d.get('antialias', False), (True, False))
  for field in ('batch_size',):
    if not (is_int(config[field]) and config[field] > 0):
      raise ConfigError(f'{field} must be an int > 0, got {config[field]!r}')
  for field in ('eval_batch_size', 'num_train_steps', 'log_every_steps',
                'eval_every_steps', 'checkpoint_every_steps'):
    value = config.get(field, 0)
    if not (is_int(value) and value >= 0):
      raise ConfigError(
          f'{field} must be an int >= 0 (0 = '
          f'{"only at the end" if "every" in field else "unset"}'
          f'), got {value!r}')
  if not config.get('num_train_steps') and not config.get('num_epochs', 0) > 0:
    raise ConfigError('set num_train_steps or num_epochs (> 0)')
  keep = config.get('keep_checkpoints')
  if keep is not None and not (is_int(keep) and keep > 0):
    raise ConfigError(
        f'keep_checkpoints must be an int > 0 or None (all), '
        f'got {keep!r}')
  if config.get('freeze_backbone') and not config.get('init_from'):
    raise ConfigError(
        'freeze_backbone needs init_from (a checkpoint to '
        'start the frozen backbone from)')
  if config.get('init_head') and not config.get('init_from'):
    raise ConfigError(
        'init_head needs init_from (the checkpoint whose '
        'classifier to keep)')
