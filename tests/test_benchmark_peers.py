"""experiments/benchmark_peers.py: a report row per system and mode, and a
PyTorch MobileNetV2 with Keras Applications' parameters."""

import json
import math
import sys

import pytest

from conftest import run_module

SYSTEMS = ('ours', 'torch', 'keras_jax')
MODES = ('train', 'infer')


@pytest.fixture(name='peers')
def peers_fixture(monkeypatch):
  """The script as a module; the KERAS_BACKEND that importing it sets is
  undone after the test."""
  monkeypatch.setenv('KERAS_BACKEND', 'jax')
  from experiments import benchmark_peers  # pylint: disable=g-import-not-at-top
  return benchmark_peers


@pytest.mark.slow
def test_every_system_times_every_mode(tmp_path):
  pytest.importorskip('torch')
  table = tmp_path / 'table.md'
  # A process of its own: the script sets KERAS_BACKEND before keras loads.
  # The reference op set compiles faster than the CPU kernels.
  result = run_module('experiments.benchmark_peers', '--alpha=0.35',
                      '--resolution=32', '--batch_size=2', '--steps=5',
                      '--warmup=1', '--threads=1', '--ops=reference', '--json',
                      f'--out={table}')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)  # exactly one object, nothing else
  rows = report['results']
  assert sorted((r['system'], r['mode']) for r in rows) == sorted(
      (s, m) for s in SYSTEMS for m in MODES)
  ours = {r['mode']: r['img_per_sec'] for r in rows if r['system'] == 'ours'}
  for row in rows:
    assert row['img_per_sec'] > 0 and row['setup_s'] > 0, row
    assert row['ours_ratio'] == pytest.approx(
        ours[row['mode']] / row['img_per_sec'])
  text = table.read_text()
  assert report['command'] in text
  assert text.count('\n| ') == 1 + len(SYSTEMS) * len(MODES)  # header + rows


@pytest.mark.parametrize('alpha', [1.0, 0.5])
def test_torch_model_has_keras_parameter_count(peers, alpha):
  pytest.importorskip('torch')
  keras = pytest.importorskip('keras')
  torch_params = sum(p.numel()
                     for p in peers.torch_mobilenet_v2(alpha).parameters())
  # Keras' BatchNorm moving statistics are non-trainable weights, torch's
  # are buffers.
  keras_model = keras.applications.MobileNetV2(
      weights=None, alpha=alpha, input_shape=(224, 224, 3))
  keras_params = sum(math.prod(v.shape) for v in keras_model.trainable_weights)
  assert torch_params == keras_params


def test_a_missing_peer_is_skipped_with_a_note(peers, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  assert peers.import_optional('torch', 'PyTorch') is None
  note = "torch not installed: skipping PyTorch (pip install -e '.[peers]')"
  assert note in capsys.readouterr().err
