"""Pretrained variables for `init_from`: a converted model or a workdir.

A converted model is a folder (what `python -m mobilenet_jax.convert` writes
from a Keras model):

  DIR/model.json  {"model", "alpha", "num_classes", "source"}: our registry
                  name, width and classes, and the converted file; written
                  last, so that its presence marks a complete conversion
  DIR/variables/  an orbax checkpoint of {'params', 'batch_stats'}
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from mobilenet_jax import checkpoint
from mobilenet_jax import config_check
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


# Keras Applications weights, what `convert` reads, were trained on ImageNet.
CONVERTED_DATASET = 'imagenet2012'
CLASSIFIER = 'classifier'  # the top Dense layer's name


def _same_dataset(a: str, b: str) -> bool:
  """Whether two data.dataset values name the same data (and labels): tfds
  names compare without config and version ('shapes/tiny' is 'shapes'),
  folders by path."""
  def base(name):
    if name.startswith('folder:'):
      return os.path.normpath(name[len('folder:'):])
    return name.split(':')[0].split('/')[0]
  return base(a) == base(b)


def _source(init_from: str):
  """(what it is, {array name: shape} of its params and batch_stats, its
  dataset or None): a converted model's or a workdir's latest checkpoint's,
  from metadata alone."""
  directory = epath.Path(init_from)
  if (directory / MODEL_FILE).exists():
    meta = json.loads((directory / MODEL_FILE).read_text())
    shapes = checkpoint.saved_shapes(
        checkpoint.absolute_path(directory) / VARIABLES_DIR)
    return (f'{meta["model"]} alpha {meta["alpha"]}', shapes,
            CONVERTED_DATASET)
  steps = checkpoint.saved_steps(init_from)
  if not steps:
    raise config_check.ConfigError(
        f'init_from must be a converted model or a workdir with '
        f'checkpoints; found neither at {init_from!r}')
  shapes = checkpoint.saved_shapes(
      checkpoint.checkpoint_dir(init_from) / str(steps[-1]) / 'default')
  try:
    config = checkpoint.load_config(init_from)
    what = f'{config.model.name} alpha {config.model.alpha}'
    dataset = config.data.dataset
  except (ValueError, OSError, AttributeError, KeyError):
    what, dataset = 'another model', None
  if shapes is not None:
    shapes = {k: v for k, v in shapes.items()
              if k.startswith(('params.', 'batch_stats.'))}
  return what, shapes, dataset


def plan_transfer(init_from: str, abstract_variables: dict, dataset: str,
                  init_head: bool = False) -> frozenset:
  """Checks, from metadata alone (seconds, before anything compiles), that
  `init_from` has every variable of `abstract_variables` ({'params',
  'batch_stats'}: shapes) with its shape, and decides what starts fresh:
  the classifier, where its shape differs (another number of classes) or
  the source was trained on another dataset than `dataset` (unless
  `init_head`). Returns the fresh variables' names ('params.classifier.
  kernel', ...); a mismatch is a one-line ConfigError naming the arrays."""
  what, saved, source_dataset = _source(init_from)
  expected = checkpoint.array_shapes(abstract_variables)
  if saved is None:  # unreadable metadata: load_pretrained will tell
    saved = expected
  head = [k for k in expected if k.split('.')[1:2] == [CLASSIFIER]]
  head_differs = any(saved.get(k) != expected[k] for k in head)
  differences = checkpoint.shape_differences(
      {k: v for k, v in saved.items() if k not in head},
      {k: v for k, v in expected.items() if k not in head}, extra=False)
  if differences:
    raise config_check.ConfigError(
        f'init_from {init_from!r} ({what}) does not fit this '
        f'model: {"; ".join(differences)}; are model.name and '
        f'model.alpha right?')
  if init_head and head_differs:
    raise config_check.ConfigError(
        f'init_head=true keeps the classifier of init_from '
        f'{init_from!r}, which has another shape: '
        + ', '.join(f'{k} {saved.get(k)} saved, {expected[k]} here'
        for k in head if saved.get(k) != expected[k]))
  other_data = (source_dataset is not None
                and not _same_dataset(source_dataset, dataset))
  if head_differs or (other_data and not init_head):
    return frozenset(head)
  return frozenset()


def load_pretrained(init_from: str) -> dict:
  """{'params', 'batch_stats'} from a converted-model folder or a training
  workdir (its latest checkpoint)."""
  if (epath.Path(init_from) / MODEL_FILE).exists():
    _, variables = load_converted(init_from)
    return variables
  manager = checkpoint.create_manager(init_from, read_only=True)
  step = manager.latest_step()
  if step is None:
    raise config_check.ConfigError(
        f'init_from must be a converted model or a workdir with '
        f'checkpoints; found neither at {init_from!r}')
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return {'params': restored['params'],
          'batch_stats': restored['batch_stats']}
