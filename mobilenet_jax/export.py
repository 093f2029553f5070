r"""Export to LiteRT (TFLite): float, dynamic-range or full-integer int8.

  python -m mobilenet_jax.export --source=DIR [--step=N] \
      [--use_ema=true|false] \
      [--resolution=R] [--quantize=none|dynamic|int8] [--float_io] \
      [--calibration_examples=N] [--calibration_dataset=NAME] \
      --output=PATH.tflite

DIR is what `init_from` accepts: a training workdir (its latest checkpoint or
`--step`; the EMA weights when the run kept them, unless `--use_ema=false`)
or a `convert` output. The network is the `reference` op set traced by
jax2tf (StableHLO) into a `tf.function` of one fixed [1, R, R, 3] float32
input (a polymorphic batch loses the converter's fusions), then TF's
TFLiteConverter with builtin ops only: BatchNorm folds into the
convolutions, depthwise convolutions become DEPTHWISE_CONV_2D, hard-swish
HARD_SWISH, and each global average pool (`jnp.mean` over H and W) one
AVERAGE_POOL_2D (`pools_as_one_op`). R defaults to the run's resolution
(224 for a converted model).

Quantization: `dynamic` stores int8 weights (float activations); `int8` is
full-integer, calibrated on the first `calibration_examples` of the run's
training split through its eval preprocessing, with int8 input and output
(float32 with `--float_io`). `--calibration_dataset` names another dataset
(its training split) to calibrate on; a converted model, which has no data,
needs one, with configs/default.py's preprocessing and [-1, 1] inputs.

Writes PATH.tflite and, beside it, PATH.json = {"model", "alpha", "expansion",
"num_classes", "padding", "resolution", "mean", "std", "quantization",
"float_io", "calibration_examples", "calibration_dataset", "source",
"checkpoint", "step", "ema", "size_bytes", "op_counts"} (`step` None for a
converted model), both via temporary files renamed at the end: an error
writes nothing.
"""

if __name__ == '__main__':
  # Before the imports that load TensorFlow.
  from mobilenet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()

import dataclasses
import json
import os
import tempfile

from absl import app
from absl import flags
import jax
from jax.experimental import jax2tf
from jax.extend import core as jax_core
import ml_collections
from ml_collections import config_flags
import numpy as np
import tensorflow as tf
from etils import epath

from mobilenet_jax import checkpoint
from mobilenet_jax import cli
from mobilenet_jax import config_check
from mobilenet_jax import config_files
from mobilenet_jax import data
from mobilenet_jax import evaluation
from mobilenet_jax import litert
from mobilenet_jax import models
from mobilenet_jax import pretrained

QUANTIZATIONS = ('none', 'dynamic', 'int8')
# Keras Applications weights (what `convert` reads) expect inputs in [-1, 1];
# timm conversions record theirs (`pretrained.converted_preprocessing`).
CONVERTED_MEAN = CONVERTED_STD = (0.5, 0.5, 0.5)
CONVERTED_RESOLUTION = 224


@dataclasses.dataclass(frozen=True)
class Source:
  """Variables to export and what they were trained with.

  model_kwargs: `models.create_model` keywords (name, alpha, expansion,
    num_classes, padding, bn_epsilon). data_config: the run's `config.data`
    (None for a converted model). step: the checkpoint's step (None: converted).
  """
  model_kwargs: dict
  variables: dict
  resolution: int
  mean: tuple
  std: tuple
  data_config: ml_collections.ConfigDict | None
  checkpoint: str
  step: int | None
  ema: bool


def load_source(directory: str, step: int | None = None,
                use_ema: bool | None = None) -> Source:
  """The variables of a training workdir (latest or `step`; EMA by default
  when the run kept it) or of a converted-model folder; a one-line
  ConfigError naming `source` or `step` for anything else."""
  path = epath.Path(directory)
  if (path / pretrained.MODEL_FILE).exists():
    if step is not None:
      raise config_check.ConfigError(
          f'step: {directory!r} is a converted model, which has '
          'no steps')
    model_kwargs, variables = pretrained.load_converted(directory)
    timm = pretrained.converted_preprocessing(directory) or {}
    return Source(model_kwargs={**model_kwargs, 'expansion': None},
                  variables=variables,
                  resolution=timm.get('input_size', CONVERTED_RESOLUTION),
                  mean=tuple(timm.get('mean', CONVERTED_MEAN)),
                  std=tuple(timm.get('std', CONVERTED_STD)), data_config=None,
                  checkpoint=os.fspath(checkpoint.absolute_path(directory)),
                  step=None, ema=False)
  if not (path / checkpoint.CONFIG_FILE).exists():
    raise config_check.ConfigError(
        f'source: {directory!r} is neither a training workdir '
        f'(no {checkpoint.CONFIG_FILE}) nor a converted model '
        f'(no {pretrained.MODEL_FILE})')
  evaluator = evaluation.Evaluator(directory, use_ema)
  steps = evaluator.steps()
  if not steps:
    raise config_check.ConfigError(
        f'source: workdir {directory!r} has no checkpoints')
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise config_check.ConfigError(
        f'step: must be one of the saved steps {steps}, got '
        f'{step}')
  state = checkpoint.restore(evaluator.manager, step, evaluator.abstract_state)
  config = evaluator.config
  return Source(
      model_kwargs={'name': config.model.name, 'alpha': config.model.alpha,
                    'expansion': config.model.get('expansion'),
                    'num_classes': evaluator.num_classes,
                    'padding': config.model.get('padding', 'same'),
                    'bn_epsilon': config.model.get('bn_epsilon', 1e-3)},
      variables=jax.device_get(
          evaluation.evaluation_variables(state, evaluator.use_ema)),
      resolution=evaluator.resolution, mean=tuple(config.data.mean),
      std=tuple(config.data.std), data_config=evaluator.data_config,
      checkpoint=checkpoint.checkpoint_path(directory, step), step=step,
      ema=evaluator.use_ema)


def calibration_images(data_config, resolution: int,
                       num_examples: int) -> np.ndarray:
  """The first `num_examples` images of the training split (fewer if it is
  smaller) through the eval preprocessing, normalised with the run's mean
  and std as the steps do (`data.normalise`): [n, R, R, 3] float32, what
  the exported model takes."""
  config = ml_collections.ConfigDict(data_config.to_dict())
  config.eval_split = config.train_split
  images = []
  for batch in data.create_eval_iterator(
      config, global_batch_size=min(num_examples, 64), resolution=resolution):
    images.extend(batch['image'][batch['mask'] > 0])
    if len(images) >= num_examples:
      break
  return data.normalise(np.stack(images[:num_examples]), config.mean,
                        config.std)


def _check_quantize(quantize: str) -> None:
  if quantize not in QUANTIZATIONS:
    raise config_check.ConfigError(
        f'quantize: must be one of {list(QUANTIZATIONS)}, got '
        f'{quantize!r}')


def _is_scalar_constant(value, expected: int) -> bool:
  """Whether `value` is a concrete (not traced) scalar equal to `expected`."""
  return (not isinstance(value, jax.core.Tracer) and np.ndim(value) == 0
          and float(value) == expected)


def _eval_with_pools_as_one_op(jaxpr, consts, args) -> list:
  """`jax.core.eval_jaxpr`, but each global average pool of an NHWC array
  (`reduce_sum` over axes 1 and 2, optionally reshaped to keep them, then
  `div` by H * W) is a `reduce_window` sum over the whole map divided by
  H * W, reshaped to the pool's shape."""
  env = {}
  sums = {}  # var -> the NHWC array it is the spatial sum of

  def read(var):
    return var.val if isinstance(var, jax_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    values = [read(var) for var in eqn.invars]
    name = eqn.primitive.name
    first = eqn.invars[0] if eqn.invars else None
    summed = (None if first is None or isinstance(first, jax_core.Literal)
              else sums.get(first))
    out_shape = (getattr(eqn.outvars[0].aval, 'shape', None)
                 if eqn.outvars else None)
    if (name == 'reduce_sum' and first.aval.ndim == 4
        and tuple(eqn.params['axes']) == (1, 2)):
      sums[eqn.outvars[0]] = values[0]
    elif (name in ('broadcast_in_dim', 'reshape') and summed is not None
          and out_shape == (summed.shape[0], 1, 1, summed.shape[3])):
      sums[eqn.outvars[0]] = summed  # keepdims=True
    elif (name == 'div' and summed is not None and _is_scalar_constant(
        values[1], summed.shape[1] * summed.shape[2])):
      _, height, width, _ = summed.shape
      pooled = jax.lax.reduce_window(
          summed, np.array(0, summed.dtype), jax.lax.add,
          (1, height, width, 1), (1, 1, 1, 1), 'VALID')
      env[eqn.outvars[0]] = jax.lax.reshape(
          pooled / np.array(height * width, summed.dtype), out_shape)
      continue
    outs = eqn.primitive.bind(*values,
                              **eqn.primitive.get_bind_params(eqn.params))
    if not eqn.primitive.multiple_results:
      outs = [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(var) for var in jaxpr.outvars]


def pools_as_one_op(fn):
  """`fn` (arrays -> a pytree of arrays) with every global average pool in
  it computed as a `reduce_window` sum over the whole H x W map divided by
  H * W, the same arithmetic as the `jnp.mean(x, axis=(1, 2))` of the
  models (with or without keepdims).

  Why: through jax2tf's StableHLO, `jnp.mean` is `reduce` + `divide`, which
  TF's converter turns into SUM and MUL (+ RESHAPE); `reduce_window` +
  `divide` is what its legaliser maps to one AVERAGE_POOL_2D (float and
  int8), as Keras' export has one MEAN. Everything else is bound as traced,
  so the network is the model's, op for op.
  """

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval_with_pools_as_one_op(closed.jaxpr, closed.consts,
                                      jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return wrapped


def configure_converter(converter: tf.lite.TFLiteConverter, quantize: str,
                        calibration: np.ndarray | None = None,
                        float_io: bool = False) -> None:
  """Sets `converter` to builtin ops and `quantize` (see `to_tflite`); the
  settings of every export, shared with experiments.latency's Keras
  exports."""
  _check_quantize(quantize)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == 'int8':
    if calibration is None:
      raise config_check.ConfigError('quantize=int8 needs calibration images')
    converter.representative_dataset = lambda: ([image[None]]
                                                for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
      converter.inference_input_type = tf.int8
      converter.inference_output_type = tf.int8


def to_tflite(model, variables: dict, resolution: int, quantize: str = 'none',
              calibration: np.ndarray | None = None,
              float_io: bool = False) -> bytes:
  """The .tflite bytes of `model.apply(variables, images, train=False)` on
  one [1, resolution, resolution, 3] float32 image.

  quantize: 'none', 'dynamic' (int8 weights) or 'int8' (full integer,
  calibrated on the images `calibration`; int8 input and output unless
  `float_io`).
  """
  _check_quantize(quantize)
  forward = jax2tf.convert(
      pools_as_one_op(
          lambda images: model.apply(variables, images, train=False)),
      with_gradient=False)
  function = tf.function(forward, autograph=False, input_signature=[
      tf.TensorSpec([1, resolution, resolution, 3], tf.float32, 'images')])
  concrete = function.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete],
                                                              function)
  configure_converter(converter, quantize, calibration, float_io)
  return converter.convert()


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _write_atomically(path: str, content: bytes) -> None:
  """Writes `content` to a temporary file beside `path`, then renames it."""
  fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or '.',
                              prefix='.' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(content)
    os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600: as open() would
    os.replace(temp, path)
  except BaseException:
    os.unlink(temp)
    raise


def export_tflite(source: str, output: str, *, step: int | None = None,
                  use_ema: bool | None = None,
                  resolution: int | None = None, quantize: str = 'none',
                  float_io: bool = False,
                  calibration_examples: int = 200,
                  calibration_dataset: str | None = None,
                  data_dir: str | None = None,
                  converted_config: ml_collections.ConfigDict | None = None
                  ) -> dict:
  """Exports `source` (a training workdir or a converted model) to
  `output` (.tflite) and its metadata to `litert.metadata_path(output)`;
  returns the metadata (see the module docstring).

  A converted model calibrates on `calibration_dataset` with the data
  settings of `converted_config` (a training config, e.g.
  configs/default.py's). Every argument is checked before anything is
  converted; a bad one is a one-line ConfigError naming it, and nothing is
  written.
  """
  _check_quantize(quantize)
  if not output.endswith('.tflite'):
    raise config_check.ConfigError(
        f'output: must end in .tflite, got {output!r}')
  folder = os.path.dirname(output) or '.'
  if not os.path.isdir(folder):
    raise config_check.ConfigError(f'output: folder {folder!r} does not exist')
  if resolution is not None and resolution < models.MIN_RESOLUTION:
    raise config_check.ConfigError(
        f'resolution: must be >= {models.MIN_RESOLUTION}, got '
        f'{resolution}')
  if calibration_examples < 1:
    raise config_check.ConfigError(
        f'calibration_examples: must be >= 1, got '
        f'{calibration_examples}')
  if float_io and quantize != 'int8':
    raise config_check.ConfigError('float_io: applies to quantize=int8 only')
  if calibration_dataset and quantize != 'int8':
    raise config_check.ConfigError(
        'calibration_dataset: applies to quantize=int8 only')
  loaded = load_source(source, step, use_ema)
  data_config = loaded.data_config
  if calibration_dataset:
    if data_config is None and converted_config is None:
      raise ValueError('converted_config: a converted model calibrates with '
                       'a training config\'s data settings')
    data_config = litert.dataset_config(
        calibration_dataset, loaded.mean, loaded.std, data_dir,
        data_config or converted_config.data)
  elif quantize == 'int8' and data_config is None:
    raise config_check.ConfigError(
        f'calibration_dataset: {source!r} is a converted model, '
        'which has no training data to calibrate int8 on; name '
        'a dataset (e.g. shapes)')
  resolution = resolution or loaded.resolution
  calibration = None
  if quantize == 'int8':
    calibration = calibration_images(data_config, resolution,
                                     calibration_examples)
  model = models.create_model(**loaded.model_kwargs, ops='reference')
  content = to_tflite(model, loaded.variables, resolution, quantize,
                      calibration, float_io)
  kwargs = loaded.model_kwargs
  meta = {
      'model': kwargs['name'], 'alpha': kwargs['alpha'],
      'expansion': kwargs['expansion'], 'num_classes': kwargs['num_classes'],
      'padding': kwargs['padding'],
      'resolution': resolution, 'mean': list(loaded.mean),
      'std': list(loaded.std), 'quantization': quantize,
      'float_io': quantize != 'int8' or float_io,
      'calibration_examples': (None if calibration is None
                               else len(calibration)),
      'calibration_dataset': (None if calibration is None
                              else data_config.dataset),
      'source': os.fspath(checkpoint.absolute_path(source)),
      'checkpoint': loaded.checkpoint, 'step': loaded.step, 'ema': loaded.ema,
      'size_bytes': len(content),
      'op_counts': litert.op_counts(content=content),
  }
  _write_atomically(output, content)
  _write_atomically(litert.metadata_path(output),
                    (json.dumps(meta, indent=2) + '\n').encode())
  return meta


def summary_line(output: str, meta: dict) -> str:
  """PATH: size, quantization, resolution; op counts by type."""
  ops = ', '.join(f'{name} {count}' for name, count in
                  meta['op_counts'].items())
  return (f"{output}: {meta['size_bytes'] / 2**20:.2f} MiB, "
          f"{meta['model']} {meta['resolution']}px {meta['quantization']}; "
          f"{ops}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  meta = export_tflite(
      f.source, f.output, step=f.step, use_ema=f.use_ema,
      resolution=f.resolution, quantize=f.quantize, float_io=f.float_io,
      calibration_examples=f.calibration_examples,
      calibration_dataset=f.calibration_dataset,
      converted_config=f.converted_config)
  print(summary_line(f.output, meta))


if __name__ == '__main__':
  # Defined here, not at import, so that importing this module adds no
  # global flags.
  flags.DEFINE_string('source', None, 'A training workdir or a converted '
                      'model (what init_from accepts).', required=True)
  flags.DEFINE_integer('step', None, 'The checkpoint step (default: latest).')
  flags.DEFINE_bool('use_ema', None, 'Export the EMA weights (default: when '
                    'the run kept them).')
  flags.DEFINE_integer('resolution', None, 'Input side in pixels (default: '
                       'the run\'s; 224 for a converted model).')
  flags.DEFINE_string('quantize', 'none', f'One of {list(QUANTIZATIONS)}.')
  flags.DEFINE_bool('float_io', False, 'With --quantize=int8: float32 input '
                    'and output instead of int8.')
  flags.DEFINE_integer('calibration_examples', 200, 'With --quantize=int8: '
                       'training examples that calibrate the quantization.')
  flags.DEFINE_string('calibration_dataset', None, 'With --quantize=int8: '
                      'calibrate on this dataset\'s training split (a tfds '
                      'name or folder:DIR; TFDS_DATA_DIR for tfds) instead '
                      'of the run\'s; required for a converted model.')
  flags.DEFINE_string('output', None, 'The .tflite file to write (its folder '
                      'must exist); the metadata goes beside it as .json.',
                      required=True)
  config_flags.DEFINE_config_file(
      'converted_config', config_files.repo_path('default'), 'With a '
      'converted model and --calibration_dataset: the config file whose data '
      'settings calibrate it.')
  cli.run(main)
