"""The training state pytree and the model built from a config.

Shared by training and evaluation, so both build exactly the same model and
the same (abstract) state to restore checkpoints into.
"""

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mobilenet_jax import models
from mobilenet_jax import optim
from mobilenet_jax import parallel


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `ema` is the EMA of the variables
  as one vector (`ravel_variables`), None when EMA is off; `rng` is folded
  with `step` for per-step dropout."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema: jax.Array | None
  rng: jax.Array


def ravel_variables(params, batch_stats) -> jax.Array:
  """{'params', 'batch_stats'} as one float32 vector: the EMA's layout.

  One vector, so that the step updates the EMA with one XLA kernel rather
  than one per leaf (~260 for V2, each costing compile time on CPU).
  """
  leaves = jax.tree.leaves({'params': params, 'batch_stats': batch_stats})
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


def unravel_variables(flat: jax.Array, params, batch_stats) -> dict:
  """The inverse of `ravel_variables`: {'params', 'batch_stats'} with the
  shapes and dtypes of the given ones (arrays or ShapeDtypeStructs)."""
  leaves, treedef = jax.tree.flatten(
      {'params': params, 'batch_stats': batch_stats})
  ends = np.cumsum([math.prod(x.shape) for x in leaves])
  if flat.shape != (ends[-1],):
    raise ValueError(f'the EMA vector has shape {flat.shape}; these variables '
                     f'need ({ends[-1]},)')
  parts = jnp.split(flat, ends[:-1])
  return treedef.unflatten([part.reshape(x.shape).astype(x.dtype)
                            for part, x in zip(parts, leaves)])


def model_from_config(model_config: ml_collections.ConfigDict,
                      num_classes: int) -> nn.Module:
  """`models.create_model` with the config's `model.*` fields."""
  return models.create_model(
      model_config.name,
      num_classes=num_classes,
      alpha=model_config.alpha,
      expansion=model_config.get('expansion'),
      dropout_rate=model_config.dropout_rate,
      dtype=model_config.dtype,
      bn_momentum=model_config.get('bn_momentum'),
      bn_epsilon=model_config.get('bn_epsilon', 1e-3),
      ops=model_config.get('ops', 'auto'),
      padding=model_config.get('padding', 'same'),
      float32_weight_grads=model_config.get('float32_weight_grads', True))


def init_variables(model: nn.Module, rng: jax.Array, resolution: int):
  """Initial {'params', 'batch_stats'} for `resolution` x `resolution` input."""
  images = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
  return model.init({'params': rng}, images, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, resolution: int,
                       use_ema: bool, variables=None) -> TrainState:
  """A fresh state (or one around given `variables`, for transfer)."""
  init_rng, rng = jax.random.split(rng)
  if variables is None:
    variables = init_variables(model, init_rng, resolution)
  params, batch_stats = variables['params'], variables['batch_stats']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema=ravel_variables(params, batch_stats) if use_ema else None,
      rng=rng)


TOP_LAYERS = ('head', 'classifier')


def trainable_mask(params, freeze_backbone: bool):
  """None (all trainable), or True only on the top layers (`TOP_LAYERS`):
  the transfer-learning recipe of a frozen base and a new head."""
  if not freeze_backbone:
    return None
  return {name: jax.tree.map(lambda _, n=name: n in TOP_LAYERS, subtree)
          for name, subtree in params.items()}


def resolve_schedule(config: ml_collections.ConfigDict) -> dict:
  """`optim.resolve_schedule` for the config's global batch; needs the
  resolved `num_train_steps` and `steps_per_epoch`."""
  return optim.resolve_schedule(
      config.optim, num_train_steps=config.num_train_steps,
      steps_per_epoch=config.get('steps_per_epoch'),
      batch_size=config.batch_size)


def create_optimizer(config: ml_collections.ConfigDict, params):
  """The config's optimizer and schedule (`params` may be shapes only).
  Needs the resolved `num_train_steps` and `steps_per_epoch`."""
  return optim.create_optimizer(
      config.optim, config.num_train_steps, params,
      steps_per_epoch=config.get('steps_per_epoch'),
      batch_size=config.batch_size,
      trainable_mask=trainable_mask(params, config.freeze_backbone))


def abstract_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                         resolution: int, mesh) -> TrainState:
  """The TrainState's shapes, dtypes and (replicated) shardings, computing
  nothing: the target checkpoints restore into, on any number of devices."""
  def build():
    variables = init_variables(model, jax.random.PRNGKey(0), resolution)
    tx, _ = create_optimizer(config, variables['params'])
    return create_train_state(model, tx, jax.random.PRNGKey(0), resolution,
                              use_ema=config.optim.ema_decay > 0,
                              variables=variables)
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(build))
