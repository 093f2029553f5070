"""Keras Applications -> Flax conversion: our logits equal Keras' own."""

import functools
import pathlib
import re
import subprocess
import sys
import warnings

import jax
import keras
import numpy as np
import pytest

from mobilenet_jax import convert
from mobilenet_jax import models
from mobilenet_jax import pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]
RESOLUTION = 64  # even: Keras V1 pads stride-2 convs (0, 1), as 'SAME' does
CLASSES = 10

_V3 = dict(include_preprocessing=False)
KERAS_MODELS = {
    'mobilenet_v1': (keras.applications.MobileNet, {}),
    'mobilenet_v2': (keras.applications.MobileNetV2, {}),
    'mobilenet_v3_large': (keras.applications.MobileNetV3Large, _V3),
    'mobilenet_v3_small': (keras.applications.MobileNetV3Small, _V3),
    'mobilenet_v3_large_minimal': (keras.applications.MobileNetV3Large,
                                   dict(_V3, minimalistic=True)),
    'mobilenet_v3_small_minimal': (keras.applications.MobileNetV3Small,
                                   dict(_V3, minimalistic=True)),
}


@functools.cache
def keras_model(name, alpha, **kwargs):
  """A Keras Applications model (weights=None) with random BatchNorm
  statistics, gammas, betas and biases, so that none is an identity."""
  constructor, defaults = KERAS_MODELS[name]
  # Not 0: a global TF seed of 0 trips tf.data's shuffle with a tensor seed
  # (random_seed.get_seed compares it as a Python bool) in later tests.
  keras.utils.set_random_seed(1)
  model = constructor(
      input_shape=(RESOLUTION, RESOLUTION, 3), alpha=alpha, weights=None,
      classes=CLASSES, classifier_activation=None, **{**defaults, **kwargs})
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape
      layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
      layer.beta.assign(rng.normal(0, 0.1, c).astype(np.float32))
      layer.moving_mean.assign(rng.normal(0, 0.1, c).astype(np.float32))
      layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
    elif getattr(layer, 'bias', None) is not None:
      layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
  return model


def images(batch=2):
  rng = np.random.default_rng(1)
  return rng.uniform(-1, 1, (batch, RESOLUTION, RESOLUTION, 3)).astype(
      np.float32)


def assert_logits_match(model, variables, keras_net):
  x = images()
  expected = np.asarray(keras_net(x, training=False))
  assert expected.shape == (2, CLASSES)
  assert expected.std() > 0.01  # logits that carry signal, not a constant
  got = np.asarray(jax.jit(model.apply)(variables, x))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('name, alpha', [
    ('mobilenet_v1', 1.0),
    ('mobilenet_v1', 0.5),
    ('mobilenet_v2', 1.0),
    ('mobilenet_v2', 0.35),
    ('mobilenet_v2', 1.4),  # widens the 1280 last conv
    ('mobilenet_v3_large', 1.0),
    ('mobilenet_v3_large', 0.75),
    ('mobilenet_v3_small', 1.0),
    ('mobilenet_v3_small', 0.75),
    ('mobilenet_v3_small_minimal', 1.0),
    ('mobilenet_v3_large_minimal', 1.25),  # widens the 1280 head
])
@pytest.mark.slow
def test_logits_match_keras(name, alpha):
  keras_net = keras_model(name, alpha)
  model, variables = convert.from_keras(keras_net, name, alpha=alpha)
  assert model.num_classes == CLASSES
  assert_logits_match(model, variables, keras_net)


def test_other_architecture_names_first_mismatching_layer():
  # V1 and V2 agree on the stem and the first depthwise conv; V2's first
  # 1x1 conv projects to 16 channels where V1's pointwise conv gives 64.
  with pytest.raises(ValueError, match="'expanded_conv_project'.*"
                     "'block_1/pointwise/conv'"):
    convert.from_keras(keras_model('mobilenet_v2', 1.0), 'mobilenet_v1')


def test_wrong_alpha_names_first_layer():
  with pytest.raises(ValueError, match="layer 0 .*'conv1'.*kernel"):
    convert.from_keras(keras_model('mobilenet_v1', 0.5), 'mobilenet_v1',
                       alpha=1.0)


def test_missing_classifier_names_unmatched_keras_layer():
  with pytest.raises(ValueError, match="unmatched is Keras 'conv_preds'"):
    convert.from_keras(keras_model('mobilenet_v1', 0.5), 'mobilenet_v1',
                       alpha=0.5, include_top=False)


def test_batch_norm_epsilon_must_match_keras():
  with pytest.raises(ValueError, match='bn_epsilon=0.001'):
    convert.from_keras(keras_model('mobilenet_v1', 0.5), 'mobilenet_v1',
                       alpha=0.5, bn_epsilon=1e-5)


def test_refuses_keras_preprocessing():
  net = keras_model('mobilenet_v3_small_minimal', 1.0,
                    include_preprocessing=True)
  with pytest.raises(ValueError, match='include_preprocessing=False'):
    convert.from_keras(net, 'mobilenet_v3_small_minimal')


@pytest.fixture(scope='module')
def saved_keras(tmp_path_factory):
  path = tmp_path_factory.mktemp('keras') / 'v1.keras'
  with warnings.catch_warnings():  # Keras' saving trips NumPy 2's __array__
    warnings.simplefilter('ignore', DeprecationWarning)
    keras_model('mobilenet_v1', 0.5).save(path)
  return path


def run_cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'mobilenet_jax.convert', *args], cwd=REPO,
      capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_cli_round_trip(saved_keras, tmp_path):
  output = tmp_path / 'converted'
  result = run_cli(f'--keras_model={saved_keras}', '--model=mobilenet_v1',
                   '--alpha=0.5', f'--output={output}')
  assert result.returncode == 0, result.stderr
  # Its last line says what it wrote where; no library INFO log, no banner.
  assert result.stdout.splitlines()[-1] == (
      f'wrote {output}: mobilenet_v1 alpha 0.5, {CLASSES} classes, from '
      f'{saved_keras}')
  assert not re.search(r'^I\d{4} |oneDNN', result.stderr, re.M), (
      result.stderr)
  model_kwargs, variables = pretrained.load_converted(str(output))
  assert model_kwargs == {'name': 'mobilenet_v1', 'alpha': 0.5,
                          'num_classes': CLASSES}
  model = models.create_model(**model_kwargs)
  assert_logits_match(model, variables, keras_model('mobilenet_v1', 0.5))


def test_refuses_to_overwrite(saved_keras, tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')
  with pytest.raises(ValueError, match='not empty'):
    convert.convert_file(str(saved_keras), 'mobilenet_v1', str(tmp_path),
                         alpha=0.5)
  assert [p.name for p in tmp_path.iterdir()] == ['notes.txt']
  assert (tmp_path / 'notes.txt').read_text() == 'keep me'


@pytest.mark.slow
def test_cli_bad_model_name(saved_keras, tmp_path):
  result = run_cli(f'--keras_model={saved_keras}', '--model=mobilenet_v9',
                   f'--output={tmp_path / "out"}')
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1, result.stderr  # one line
  last_line = result.stderr.strip()
  assert 'mobilenet_v9' in last_line
  assert "'mobilenet_v2'" in last_line and "'mobilenet_v3_small'" in last_line
  assert not (tmp_path / 'out').exists()
