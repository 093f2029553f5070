"""Keras Applications MobileNet weights -> Flax variables of our models.

`from_keras` maps a `keras.applications` MobileNet, MobileNetV2,
MobileNetV3Large or MobileNetV3Small onto `models.create_model(name, ...)`:
V1 -> mobilenet_v1, V2 -> mobilenet_v2, V3 -> mobilenet_v3_large/small and
V3 with `minimalistic=True` -> mobilenet_v3_*_minimal. V3 must be built with
`include_preprocessing=False`: our models take images already scaled.

Both networks are listed as their weighted layers in call order (ours, with
the `reference` op set: every nn.Conv, nn.Dense and nn.BatchNorm; Keras': every
Conv2D, DepthwiseConv2D, BatchNormalization and Dense) and zipped, checking
kinds and shapes; the first layer that does not line up is a ConfigError.
Layouts: Keras' depthwise kernel (k, k, C, 1) is our (k, k, 1, C); its 1x1
Conv2D head/classifier (1, 1, in, out) is our nn.Dense (in, out); BatchNorm
gamma/beta/moving_mean/moving_variance are scale/bias/mean/var.

Command line (writes a converted-model folder, `mobilenet_jax.pretrained`'s
format, which `init_from` and `pretrained.load_converted` read):

  python -m mobilenet_jax.convert --keras_model=m.keras \
      --model=mobilenet_v2 --alpha=1.0 --output=DIR
"""

if __name__ == '__main__':
  # Before the imports that load TensorFlow.
  from mobilenet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()

from absl import app
from absl import flags
import flax.linen as nn
from flax import traverse_util
import jax.numpy as jnp
import keras

from mobilenet_jax import checkpoint
from mobilenet_jax import cli
from mobilenet_jax import config_check
from mobilenet_jax import models
from mobilenet_jax import pretrained


def _our_kind(module: nn.Module) -> str | None:
  """A weighted module's kind, as `_keras_layers` names Keras' (None for
  others; nn.Dense is no nn.Conv subclass)."""
  if isinstance(module, nn.BatchNorm):
    return 'batch_norm'
  if isinstance(module, nn.Dense):
    return 'dense'
  if isinstance(module, nn.Conv):
    return 'depthwise' if module.feature_group_count > 1 else 'conv'
  return None


def _our_layers(model: nn.Module):
  """Our weighted modules in call order, [(path, kind)], and the variables'
  shapes."""
  calls = []

  def record(next_fun, args, kwargs, context):
    kind = _our_kind(context.module)
    if context.method_name == '__call__' and kind:
      calls.append((context.module.path, kind))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    abstract = pretrained.abstract_variables(model.clone(ops='reference'))
  return calls, abstract


def _keras_layers(keras_model: keras.Model):
  """Keras' weighted layers in order, [(layer, kind, {(collection, name):
  array})], with our variable names and layouts."""
  out = []
  for layer in keras_model.layers:
    if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
      raise config_check.ConfigError(
          f'keras_model has a preprocessing layer {layer.name!r}; build it '
          'with include_preprocessing=False (our models take scaled images)')
    if not layer.weights:
      continue
    if isinstance(layer, keras.layers.DepthwiseConv2D):
      kind = 'depthwise'
      arrays = {'kernel': layer.kernel, 'bias': layer.bias}
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      kind = 'dense' if isinstance(layer, keras.layers.Dense) else 'conv'
      arrays = {'kernel': layer.kernel, 'bias': layer.bias}
    elif isinstance(layer, keras.layers.BatchNormalization):
      kind = 'batch_norm'
      arrays = {'scale': layer.gamma, 'bias': layer.beta,
                'mean': layer.moving_mean, 'var': layer.moving_variance}
    else:
      raise config_check.ConfigError(
          f'Keras layer {layer.name!r} ({type(layer).__name__}) has weights '
          'but no counterpart: only Conv2D, DepthwiseConv2D, '
          'BatchNormalization and Dense convert')
    variables = {}
    for key, value in arrays.items():
      if value is not None:
        collection = 'batch_stats' if key in ('mean', 'var') else 'params'
        variables[collection, key] = value.numpy()
    if kind == 'depthwise':  # (k, k, C, multiplier) -> (k, k, multiplier, C)
      variables['params', 'kernel'] = variables['params', 'kernel'].transpose(
          0, 1, 3, 2)
    out.append((layer, kind, variables))
  return out


def _shapes(variables: dict) -> str:
  return ', '.join(f'{key}{tuple(v.shape)}'
                   for (_, key), v in sorted(variables.items()))


def from_keras(keras_model: keras.Model, name: str, *, alpha: float = 1.0,
               **create_model_kwargs):
  """Converts a Keras Applications MobileNet onto our model `name`.

  Args:
    keras_model: a `keras.applications` MobileNet / MobileNetV2 /
      MobileNetV3Large / MobileNetV3Small with its top (V3 built with
      `include_preprocessing=False`).
    name: our registry name of the same architecture (see module docstring).
    alpha: the width multiplier the Keras model was built with.
    **create_model_kwargs: further `models.create_model` keywords
      (num_classes is taken from the Keras model).

  Returns:
    (model, variables): our module and {'params': ..., 'batch_stats': ...}
    whose logits equal Keras' pre-softmax outputs.

  Raises:
    ConfigError: if the two networks' weighted layers do not line up, naming
      the first pair that differs.
  """
  model = models.create_model(name, alpha=alpha,
                              num_classes=keras_model.output_shape[-1],
                              **create_model_kwargs)
  ours, abstract = _our_layers(model)
  theirs = _keras_layers(keras_model)
  flat_abstract = traverse_util.flatten_dict(abstract)
  flat = {}
  for i, ((path, kind), (keras_layer, keras_kind, variables)) in enumerate(
      zip(ours, theirs)):
    keras_name = keras_layer.name
    kernel = variables.get(('params', 'kernel'))
    if (kind, keras_kind) == ('dense', 'conv') and kernel.shape[:2] == (1, 1):
      # Keras' V1/V3 classifier (and V3 head) is a 1x1 conv on a 1x1 map.
      variables[('params', 'kernel')] = kernel[0, 0]
      keras_kind = 'dense'
    expected = {(col, key): value
                for (col, *rest, key), value in flat_abstract.items()
                if tuple(rest) == path}
    if (kind != keras_kind or set(expected) != set(variables) or any(
        expected[k].shape != variables[k].shape for k in expected)):
      raise config_check.ConfigError(
          f'layer {i} does not line up: Keras {keras_name!r} ({keras_kind}: '
          f'{_shapes(variables)}) vs {name} (alpha={alpha}) '
          f'{"/".join(path)!r} ({kind}: {_shapes(expected)})')
    if kind == 'batch_norm' and keras_layer.epsilon != model.bn_epsilon:
      raise config_check.ConfigError(
          f'Keras {keras_name!r} has BatchNorm epsilon {keras_layer.epsilon}; '
          f'pass bn_epsilon={keras_layer.epsilon} (got {model.bn_epsilon})')
    for (col, key), value in variables.items():
      flat[(col, *path, key)] = jnp.asarray(value, expected[col, key].dtype)
  if len(ours) != len(theirs):
    first = ('ours ' + repr('/'.join(ours[len(theirs)][0]))
             if len(ours) > len(theirs) else
             'Keras ' + repr(theirs[len(ours)][0].name))
    raise config_check.ConfigError(
        f'{name} (alpha={alpha}) has {len(ours)} weighted layers, the Keras '
        f'model {len(theirs)}; the first unmatched is {first}')
  missing = sorted('/'.join(k) for k in set(flat_abstract) - set(flat))
  if missing:
    raise config_check.ConfigError(
        f'{name} variables with no Keras counterpart: {missing}')
  return model, traverse_util.unflatten_dict(flat)


def convert_file(keras_path: str, name: str, output: str,
                 alpha: float = 1.0) -> str:
  """Converts a saved `.keras` model into the converted-model folder
  `output` (`mobilenet_jax.pretrained`), which must not exist or be empty;
  returns `summary_line`'s report of it."""
  if name not in models.REGISTRY:
    raise config_check.ConfigError(
        f'model must be one of {sorted(models.REGISTRY)}, got {name!r}')
  output = checkpoint.absolute_path(output)
  if output.exists() and (not output.is_dir() or any(output.iterdir())):
    raise config_check.ConfigError(
        f'output {output} exists and is not empty; refusing to '
        'overwrite it')
  model, variables = from_keras(keras.models.load_model(keras_path), name,
                                alpha=alpha)
  source = str(checkpoint.absolute_path(keras_path))
  pretrained.save_converted(
      output, variables, name=name, alpha=alpha, num_classes=model.num_classes,
      source=source)
  return summary_line(output, name, alpha, model.num_classes, source)


def summary_line(output, name: str, alpha: float, num_classes: int,
                 source: str) -> str:
  """The command's last line, whichever source it converted: what it wrote
  where, e.g. 'wrote DIR: mobilenet_v2 alpha 1.0, 1000 classes, from
  m.keras'."""
  return (f'wrote {output}: {name} alpha {alpha}, {num_classes} classes, '
          f'from {source}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  print(convert_file(flags.FLAGS.keras_model, flags.FLAGS.model,
                     flags.FLAGS.output, flags.FLAGS.alpha))


if __name__ == '__main__':
  # Defined here, not at import, so that importing this module (e.g. for
  # `from_keras`) adds no global flags.
  flags.DEFINE_string('keras_model', None, 'A saved Keras model (.keras).',
                      required=True)
  flags.DEFINE_string('model', None, 'Our registry name, e.g. mobilenet_v2.',
                      required=True)
  flags.DEFINE_float('alpha', 1.0, 'The Keras model\'s width multiplier.')
  flags.DEFINE_string('output', None, 'A new (or empty) output directory.',
                      required=True)
  cli.run(main)
