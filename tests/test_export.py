"""Export to LiteRT: float logits equal JAX's with the fused ops of Keras'
own export, int8 agrees with float, the metadata, the commands (export,
bench --tflite, evaluate --tflite) and one-line errors for bad inputs."""

import json
import os

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from conftest import run_module
from mobilenet_jax import checkpoint
from mobilenet_jax import data
from mobilenet_jax import export
from mobilenet_jax import litert
from mobilenet_jax import models
from mobilenet_jax import pretrained
from mobilenet_jax import train
from conftest import tiny_config

FAMILIES = ('mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large',
            'mobilenet_v3_small', 'mobilenet_v4_conv_small')
RESOLUTION = 48


def perturbed(variables, seed=0):
  """`variables` with random weights and BatchNorm statistics (the initial
  ones give near-zero logits, which would compare trivially)."""
  flat = traverse_util.flatten_dict(variables)
  keys = jax.random.split(jax.random.key(seed), len(flat))
  out = {}
  for key, (path, x) in zip(keys, flat.items()):
    noise = jax.random.normal(key, x.shape)
    if path[-1] == 'var':
      out[path] = x * jnp.exp(0.2 * noise)
    elif path[-1] == 'kernel':
      out[path] = x * (1 + 0.2 * noise)
    else:
      out[path] = x + 0.1 * noise
  return traverse_util.unflatten_dict(out)


def kernel_counts(params) -> tuple[int, int]:
  """(depthwise convolutions, dense layers) of a params tree."""
  kernels = [x for path, x in traverse_util.flatten_dict(params).items()
             if path[-1] == 'kernel']
  depthwise = sum(x.ndim == 4 and x.shape[2] == 1 for x in kernels)
  return depthwise, sum(x.ndim == 2 for x in kernels)


def squeeze_excites(params) -> int:
  """The squeeze-and-excite modules of a params tree (V3's `se`)."""
  return sum(path[-2:] == ('reduce', 'kernel')
             for path in traverse_util.flatten_dict(params))


def export_and_compare(name, **kwargs):
  """Exports `name` at alpha 0.35 with random weights (float) and checks
  that LiteRT gives JAX's logits; returns (variables, op counts)."""
  model = models.create_model(name, alpha=0.35, num_classes=10,
                              ops='reference', **kwargs)
  variables = perturbed(model.init(
      jax.random.key(0), jnp.zeros((1, RESOLUTION, RESOLUTION, 3))))
  content = export.to_tflite(model, variables, RESOLUTION)
  interpreter = litert.load(content=content)
  images = np.random.default_rng(0).standard_normal(
      (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
  expected = np.asarray(model.apply(variables, images, train=False))
  assert np.abs(expected).max() > 0.1  # not trivially small
  for image, logits in zip(images, expected):
    np.testing.assert_allclose(litert.predict(interpreter, image), logits,
                               rtol=0, atol=1e-4)
  return variables, litert.op_counts(content=content)


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILIES)
def test_float_export_matches_jax_with_fused_ops(name):
  variables, counts = export_and_compare(name)
  depthwise, dense = kernel_counts(variables['params'])
  assert counts['DEPTHWISE_CONV_2D'] == depthwise, counts
  # Only the classifier (and V3's dense head) are FULLY_CONNECTED.
  assert counts['FULLY_CONNECTED'] == dense, counts
  assert ('HARD_SWISH' in counts) == name.startswith('mobilenet_v3'), counts
  # BatchNorm is folded into the convolutions.
  assert not {'SUB', 'RSQRT', 'SQRT', 'DIV'} & set(counts), counts
  # Every global average pool (the head's, each squeeze-excite's) is one op
  # (export.pools_as_one_op), not SUM + MUL (+ RESHAPE).
  assert counts['AVERAGE_POOL_2D'] == 1 + squeeze_excites(variables['params'])
  assert not {'SUM', 'MEAN', 'RESHAPE'} & set(counts), counts


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
  """A briefly trained tiny MobileNetV2 workdir (EMA kept; steps 3..30)."""
  workdir = str(tmp_path_factory.mktemp('run'))
  config = tiny_config(data_dir, num_train_steps=30, **{
      'model.name': 'mobilenet_v2', 'model.alpha': 0.35,
      'optim.learning_rate': 0.01, 'optim.ema_decay': 0.9,
      'checkpoint_every_steps': 15})
  train.train_and_evaluate(config, workdir)
  return workdir


def top1_predictions(tflite_path, data_config, resolution):
  interpreter = litert.load(tflite_path)
  predictions = []
  for batch in data.create_eval_iterator(data_config, global_batch_size=25,
                                         resolution=resolution):
    images = data.normalise(batch['image'], data_config.mean, data_config.std)
    predictions += [np.argmax(litert.predict(interpreter, image))
                    for image, mask in zip(images, batch['mask']) if mask]
  return np.array(predictions)


@pytest.mark.slow
def test_int8_export_agrees_with_float_and_records_its_metadata(run,
                                                                 tmp_path):
  float_path, int8_path = str(tmp_path / 'f.tflite'), str(tmp_path / 'q.tflite')
  float_meta = export.export_tflite(run, float_path)
  meta = export.export_tflite(run, int8_path, quantize='int8',
                              calibration_examples=32)
  config = checkpoint.load_config(run)
  assert meta == json.loads((tmp_path / 'q.json').read_text())
  assert meta == {
      'model': 'mobilenet_v2', 'alpha': 0.35, 'expansion': None,
      'num_classes': float_meta['num_classes'], 'padding': 'same',
      'resolution': 32,
      'mean': list(config.data.mean), 'std': list(config.data.std),
      'quantization': 'int8', 'float_io': False, 'calibration_examples': 32,
      'calibration_dataset': config.data.dataset,
      'source': run, 'checkpoint': checkpoint.checkpoint_path(run, 30),
      'step': 30, 'ema': True, 'size_bytes': os.path.getsize(int8_path),
      'op_counts': litert.op_counts(int8_path)}
  assert float_meta['quantization'] == 'none' and float_meta['float_io']
  assert meta['size_bytes'] < 0.5 * float_meta['size_bytes']
  (input_detail,) = litert.load(int8_path).get_input_details()
  assert input_detail['dtype'] == np.int8

  float_top1 = top1_predictions(float_path, config.data, 32)
  int8_top1 = top1_predictions(int8_path, config.data, 32)
  assert np.mean(float_top1 == int8_top1) >= 0.8

  # Evaluations go beside the JAX one, which stays as it was.
  jax_result = (checkpoint.eval_result_path(run, 30)).read_text()
  float_result = litert.evaluate(float_path)
  int8_result = litert.evaluate(int8_path)
  assert checkpoint.eval_result_path(run, 30).read_text() == jax_result
  assert json.loads(
      litert.result_path(run, 30, 'int8').read_text()) == int8_result
  assert float_result['top1'] == pytest.approx(
      np.mean(float_top1 == _labels(config.data)))
  assert abs(float_result['top1'] - json.loads(jax_result)['top1']) <= 1 / 75
  # Another split goes beside them, named as the JAX evaluation's variants.
  float_file = litert.result_path(run, 30, 'none')
  float_text = float_file.read_text()
  other = litert.evaluate(float_path, split='train[:20]')
  assert other['num_examples'] == 20
  assert float_file.read_text() == float_text
  assert json.loads((float_file.parent / 'step_30.train_to20.ema.tflite_none'
                     '.json').read_text()) == other

  float_io = export.export_tflite(run, str(tmp_path / 'fio.tflite'),
                                  quantize='int8', float_io=True,
                                  calibration_examples=8)
  assert float_io['float_io'] and float_io['calibration_examples'] == 8
  (input_detail,) = litert.load(
      str(tmp_path / 'fio.tflite')).get_input_details()
  assert input_detail['dtype'] == np.float32

  with pytest.raises(ValueError, match='^step: must be one of the saved'):
    export.export_tflite(run, str(tmp_path / 'x.tflite'), step=7)
  assert sorted(os.listdir(tmp_path)) == [
      'f.json', 'f.tflite', 'fio.json', 'fio.tflite', 'q.json', 'q.tflite']


def _labels(data_config):
  return np.array([label for batch in data.create_eval_iterator(
      data_config, global_batch_size=25, resolution=32)
                   for label, mask in zip(batch['label'], batch['mask'])
                   if mask])


@pytest.mark.slow
def test_commands_export_bench_and_evaluate(run, tmp_path):
  output = str(tmp_path / 'v2.tflite')
  result = run_module('mobilenet_jax.export', f'--source={run}', '--step=15',
                      '--quantize=dynamic', f'--output={output}')
  assert result.returncode == 0, result.stderr[-2000:]
  (line,) = result.stdout.splitlines()
  assert line.startswith(f'{output}: ') and 'DEPTHWISE_CONV_2D 17' in line
  assert json.loads((tmp_path / 'v2.json').read_text())['step'] == 15

  result = run_module('mobilenet_jax.bench', f'--tflite={output}', '--json')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  assert report['steps'] == 30 and report['threads'] == 1
  assert 0 < report['step_ms_min'] <= report['step_ms_median']

  result = run_module('mobilenet_jax.evaluate', f'--tflite={output}')
  assert result.returncode == 0, result.stderr[-2000:]
  evaluated = json.loads(result.stdout)
  assert evaluated['step'] == 15 and evaluated['quantization'] == 'dynamic'
  assert litert.result_path(run, 15, 'dynamic').exists()


@pytest.mark.slow
def test_converted_model_exports_float_at_224_by_default(tmp_path,
                                                         data_dir):
  model = models.create_model('mobilenet_v3_small', alpha=0.35,
                              num_classes=5, ops='reference')
  variables = perturbed(model.init(jax.random.key(1),
                                   jnp.zeros((1, 32, 32, 3))))
  pretrained.save_converted(str(tmp_path / 'converted'), variables,
                            name='mobilenet_v3_small', alpha=0.35,
                            num_classes=5, source='test')
  output = str(tmp_path / 'v3.tflite')
  meta = export.export_tflite(str(tmp_path / 'converted'), output)
  assert (meta['resolution'], meta['step'], meta['mean'], meta['std']) == (
      224, None, [0.5] * 3, [0.5] * 3)
  image = np.random.default_rng(0).uniform(-1, 1, (224, 224, 3))
  np.testing.assert_allclose(
      litert.predict(litert.load(output), image.astype(np.float32)),
      model.apply(variables, image[None], train=False)[0], rtol=0, atol=1e-4)
  for kwargs, message in [
      (dict(step=1), '^step: .* is a converted model'),
      (dict(quantize='int8'), '^calibration_dataset: .* is a converted model'),
      (dict(calibration_dataset='shapes'), '^calibration_dataset: applies to')]:
    with pytest.raises(ValueError, match=message):
      export.export_tflite(str(tmp_path / 'converted'),
                           str(tmp_path / 'x.tflite'), **kwargs)
  assert not (tmp_path / 'x.tflite').exists()
  with pytest.raises(ValueError, match='^dataset: .* converted model'):
    litert.evaluate(output)

  # int8 calibrated on a named dataset, evaluated on one (its test split,
  # configs/default.py's preprocessing, the export's [-1, 1] inputs).
  int8_output = str(tmp_path / 'v3_int8.tflite')
  meta = export.export_tflite(
      str(tmp_path / 'converted'), int8_output, quantize='int8',
      resolution=32, calibration_examples=4, calibration_dataset='shapes/tiny',
      data_dir=data_dir, converted_config=default.get_config())
  assert (meta['calibration_dataset'], meta['calibration_examples'],
          meta['step']) == ('shapes/tiny', 4, None)
  result = litert.evaluate(int8_output, dataset='shapes/tiny',
                           data_dir=data_dir,
                           converted_config=default.get_config())
  assert (result['dataset'], result['split'], result['step'],
          result['quantization']) == ('shapes/tiny', 'test', None, 'int8')
  assert result['num_examples'] > 0 and 0 <= result['top1'] <= 1
  assert json.loads(litert.converted_result_path(
      int8_output, 'shapes/tiny', 'test').read_text()) == result
  assert (tmp_path / 'v3_int8.eval.shapes-tiny.test.json').exists()


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path):
  output = str(tmp_path / 'model.tflite')
  cases = [
      (dict(source=str(tmp_path)), '^source: .* is neither a training'),
      (dict(source=str(tmp_path), quantize='int4'), '^quantize: must be one'),
      (dict(source=str(tmp_path), output=str(tmp_path / 'no' / 'm.tflite')),
       '^output: folder .* does not exist'),
  ]
  for kwargs, message in cases:
    kwargs = {'output': output, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
      export.export_tflite(**kwargs)
    assert '\n' not in str(error.value)
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_export_command_reports_bad_input_in_one_line(tmp_path):
  result = run_module('mobilenet_jax.export', f'--source={tmp_path}',
                      f'--output={tmp_path}/m.tflite')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: source: ')
  assert not os.listdir(tmp_path)


def test_outputs_get_the_usual_file_mode(tmp_path):
  # mkstemp creates 0600 files; the .tflite and .json are for sharing.
  old = os.umask(0o022)
  try:
    export._write_atomically(str(tmp_path / 'm.tflite'), b'model')
  finally:
    os.umask(old)
  assert (tmp_path / 'm.tflite').stat().st_mode & 0o777 == 0o644
  assert (tmp_path / 'm.tflite').read_bytes() == b'model'
  assert os.listdir(tmp_path) == ['m.tflite']  # no temporary left


# The hybrids' Mobile MQA (einsums, softmax), Hybrid-L's GELU, and PyTorch
# padding at an even size (where it differs from 'SAME'): LiteRT computes
# the JAX function.
@pytest.mark.slow
@pytest.mark.parametrize('name, padding', [
    ('mobilenet_v4_hybrid_medium', 'same'),
    ('mobilenet_v4_hybrid_large', 'symmetric'),
    ('mobilenet_v3_small', 'symmetric')])
def test_hybrid_and_symmetric_padding_exports_match_jax(name, padding):
  variables, counts = export_and_compare(name, padding=padding)
  depthwise, _ = kernel_counts(variables['params'])
  assert counts['DEPTHWISE_CONV_2D'] == depthwise, counts
