"""Pretrained variables for `init_from`: a converted model or a workdir.

A converted model is a folder (what `python -m mobilenet_jax.convert` writes
from a Keras model):

  DIR/model.json  {"model", "alpha", "num_classes", "source"}: our registry
                  name, width and classes, and the converted file; written
                  last, so that its presence marks a complete conversion
  DIR/variables/  an orbax checkpoint of {'params', 'batch_stats'}
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from mobilenet_jax import checkpoint
from mobilenet_jax import models

MODEL_FILE = 'model.json'
VARIABLES_DIR = 'variables'


def abstract_variables(model: nn.Module) -> dict:
  """Shapes and dtypes of `model`'s variables (no computation)."""
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def save_converted(output: str, variables: dict, *, name: str, alpha: float,
                   num_classes: int, source: str) -> None:
  """Writes `variables` of our model `name` (`alpha`, `num_classes`),
  converted from the file `source`, as a converted-model folder `output`."""
  output = checkpoint.absolute_path(output)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(output / VARIABLES_DIR, variables)
  (output / MODEL_FILE).write_text(json.dumps(
      {'model': name, 'alpha': alpha, 'num_classes': num_classes,
       'source': source}, indent=2))


def load_converted(directory: str):
  """Reads a converted-model folder back.

  Returns:
    (model_kwargs, variables): `models.create_model(**model_kwargs)` builds
    the model ({'name', 'alpha', 'num_classes'}); variables are
    {'params': ..., 'batch_stats': ...}.
  """
  directory = checkpoint.absolute_path(directory)
  meta = json.loads((directory / MODEL_FILE).read_text())
  model_kwargs = {'name': meta['model'], 'alpha': meta['alpha'],
                  'num_classes': meta['num_classes']}
  abstract = abstract_variables(models.create_model(**model_kwargs))
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(directory / VARIABLES_DIR, abstract)
  return model_kwargs, variables


def load_pretrained(init_from: str) -> dict:
  """{'params', 'batch_stats'} from a converted-model folder or a training
  workdir (its latest checkpoint)."""
  if (epath.Path(init_from) / MODEL_FILE).exists():
    _, variables = load_converted(init_from)
    return variables
  manager = checkpoint.create_manager(init_from, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise ValueError(f'init_from must be a converted model or a workdir with '
                     f'checkpoints; found neither at {init_from!r}')
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return {'params': restored['params'],
          'batch_stats': restored['batch_stats']}
