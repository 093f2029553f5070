"""Config files: fast to load (no jax, TensorFlow or optax) and
hardware-neutral recipes with a TPU override."""

import glob
import os
import pathlib
import subprocess
import sys

import pytest

from configs import default
from configs import imagenet_mobilenet_v1
from configs import imagenet_mobilenet_v2
from configs import imagenet_mobilenet_v3_large
from configs import imagenet_mobilenet_v3_small
from configs import imagenet_mobilenet_v4_conv_large
from configs import imagenet_mobilenet_v4_conv_medium
from configs import imagenet_mobilenet_v4_conv_small
from configs import imagenet_mobilenet_v4_hybrid_large
from configs import imagenet_mobilenet_v4_hybrid_medium
from configs import tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.basename(path)[:-len('.py')]
    for path in glob.glob(os.path.join(REPO, 'configs', '*.py'))
    if 'def get_config' in pathlib.Path(path).read_text())
HEAVY = ('jax', 'tensorflow', 'optax')


def test_every_config_file_is_listed():
  assert {'default', 'cifar10', 'tpu', 'imagenet_mobilenet_v2'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_loading_a_config_imports_no_jax_tensorflow_or_optax(name):
  code = (f'import importlib, sys\n'
          f'importlib.import_module("configs.{name}").get_config()\n'
          f'print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == '[]'


@pytest.mark.parametrize('get_config', [
    imagenet_mobilenet_v1.get_config, imagenet_mobilenet_v2.get_config,
    imagenet_mobilenet_v3_large.get_config,
    imagenet_mobilenet_v3_small.get_config,
    imagenet_mobilenet_v4_conv_small.get_config,
    imagenet_mobilenet_v4_conv_medium.get_config,
    imagenet_mobilenet_v4_conv_large.get_config,
    imagenet_mobilenet_v4_hybrid_medium.get_config,
    imagenet_mobilenet_v4_hybrid_large.get_config])
def test_imagenet_recipes_are_hardware_neutral(get_config):
  config = get_config()
  assert (config.model.dtype, config.model.ops) == (
      default.get_config().model.dtype, default.get_config().model.ops)


def test_tpu_override_changes_only_the_dtype():
  recipe = imagenet_mobilenet_v2.get_config('alpha=0.75').to_dict()
  on_tpu = tpu.get_config('recipe=imagenet_mobilenet_v2,alpha=0.75').to_dict()
  assert on_tpu['model'].pop('dtype') == 'bfloat16'
  recipe['model'].pop('dtype')
  assert on_tpu == recipe


IMAGENET_TRAIN = 1281167  # imagenet2012's train split


def _resolved(config):
  """The recipe as the run resolves it, with imagenet2012's sizes."""
  from mobilenet_jax import data, train  # pylint: disable=g-import-not-at-top
  info = data.DatasetInfo(
      name='imagenet2012', num_classes=1000, train_split='train',
      eval_split='validation',
      num_examples={'train': IMAGENET_TRAIN, 'validation': 50000},
      image_shape=None)
  return train.resolve_config(config, info)


# Each source's peak learning rate and warm-up at its own global batch: the
# TPU MobileNet/MnasNet recipe (0.016 per 256 images, 5 epochs) and TF Model
# Garden's MobileNetV4 yamls (warm-up 1560 steps at 4096 and at 16384).
SOURCES = [
    (imagenet_mobilenet_v1.get_config, 4096, 0.256,
     5 * (IMAGENET_TRAIN // 4096)),
    (imagenet_mobilenet_v2.get_config, 4096, 0.256,
     5 * (IMAGENET_TRAIN // 4096)),
    (imagenet_mobilenet_v3_large.get_config, 4096, 0.256,
     5 * (IMAGENET_TRAIN // 4096)),
    (imagenet_mobilenet_v3_small.get_config, 4096, 0.256,
     5 * (IMAGENET_TRAIN // 4096)),
    (imagenet_mobilenet_v4_conv_small.get_config, 4096, 0.002, 1560),
    (imagenet_mobilenet_v4_conv_medium.get_config, 4096, 0.004, 1560),
    (imagenet_mobilenet_v4_conv_large.get_config, 16384, 0.004, 1560),
    (imagenet_mobilenet_v4_hybrid_medium.get_config, 16384, 0.016, 1560),
    (imagenet_mobilenet_v4_hybrid_large.get_config, 16384, 0.01, 1560),
]


@pytest.mark.parametrize('get_config, batch, lr, warmup', SOURCES)
def test_recipes_reproduce_their_sources_at_the_sources_batch(
    get_config, batch, lr, warmup):
  config = _resolved(get_config())
  assert config.batch_size == batch
  assert config.steps_per_epoch == IMAGENET_TRAIN // batch
  assert config.schedule.learning_rate == pytest.approx(lr, rel=1e-12)
  assert config.schedule.warmup_steps == warmup


@pytest.mark.parametrize('get_config, batch, lr, warmup', SOURCES)
def test_a_batch_size_override_scales_the_learning_rate_and_warmup(
    get_config, batch, lr, warmup):
  config = get_config()
  config.batch_size = 1024  # as --config.batch_size=1024 does
  resolved = _resolved(config)
  assert resolved.schedule.learning_rate == pytest.approx(lr * 1024 / batch,
                                                          rel=1e-12)
  # The same number of epochs of warm-up, in 1024-image steps.
  epochs = warmup / (IMAGENET_TRAIN // batch)
  assert resolved.schedule.warmup_steps == int(epochs * (IMAGENET_TRAIN //
                                                         1024))
  assert resolved.schedule.warmup_steps > warmup
  # The given values are kept beside the resolved ones.
  assert resolved.optim.to_dict() == config.optim.to_dict()


def test_v2_recipe_decays_every_2_4_epochs_at_any_batch():
  for batch in (4096, 1024):
    config = imagenet_mobilenet_v2.get_config()
    config.batch_size = batch
    assert _resolved(config).schedule.decay_steps == int(
        2.4 * (IMAGENET_TRAIN // batch))


# TF Model Garden's imagenet_mobilenetv4_hybrid_{medium,large}_tpu.yaml:
# (model, input size, global batch, peak learning rate, weight decay).
@pytest.mark.parametrize('get_config, name, resolution, lr, weight_decay', [
    (imagenet_mobilenet_v4_hybrid_medium.get_config,
     'mobilenet_v4_hybrid_medium', 256, 0.016, 0.1),
    (imagenet_mobilenet_v4_hybrid_large.get_config,
     'mobilenet_v4_hybrid_large', 384, 0.01, 0.2)])
def test_hybrid_recipes_follow_model_gardens_yamls(get_config, name,
                                                   resolution, lr,
                                                   weight_decay):
  config = get_config()
  assert (config.model.name, config.data.base_resolution,
          config.batch_size) == (name, resolution, 16384)
  assert (config.optim.name, config.optim.schedule) == ('adamw', 'cosine')
  assert config.optim.learning_rate == pytest.approx(lr)
  assert config.optim.base_batch_size == 16384
  assert config.optim.weight_decay == weight_decay
  assert (config.model.bn_momentum, config.model.dropout_rate,
          config.optim.label_smoothing) == (0.997, 0.2, 0.1)
