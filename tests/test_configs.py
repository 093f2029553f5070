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
  assert config.optim.weight_decay == weight_decay
  assert config.optim.warmup_steps == 1560
  assert (config.model.bn_momentum, config.model.dropout_rate,
          config.optim.label_smoothing) == (0.997, 0.2, 0.1)
  # Half the batch: half the learning rate, twice the warm-up steps.
  half = get_config('batch_size=8192')
  assert half.optim.learning_rate == pytest.approx(lr / 2)
  assert half.optim.warmup_steps == 3120
