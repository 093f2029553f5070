"""The benchmark command: one JSON object whose numbers agree with each other."""

import json

import pytest

from configs import imagenet_mobilenet_v2
from conftest import run_module
from mobilenet_jax import bench


@pytest.mark.slow
def test_bench_json_is_one_consistent_object():
  result = run_module('mobilenet_jax.bench',
                      '--model=mobilenet_v3_small', '--alpha=0.35',
                      '--resolution=32', '--batch_size=2', '--mode=infer',
                      '--ops=cpu', '--steps=5', '--warmup=1', '--json')
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)  # exactly one object, nothing else
  for key in ('img_per_sec', 'step_ms_median', 'compile_s', 'peak_mem_mb'):
    assert report[key] > 0, key
  # Throughput is the batch over the median step time.
  assert abs(report['img_per_sec'] - 2 / (report['step_ms_median'] / 1000)) < (
      1e-6 * report['img_per_sec'] + 1e-3)


@pytest.mark.slow
def test_bench_rejects_an_unknown_model():
  result = run_module('mobilenet_jax.bench', '--model=resnet50', '--json')
  assert result.returncode == 2
  assert 'model name must be one of' in result.stderr


def test_bench_data_on_a_folder_of_jpegs_reports_cpu_per_image(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import bench  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for label in ('a', 'b'):
    (tmp_path / 'train' / label).mkdir(parents=True)
    for i in range(4):
      image = rng.integers(0, 256, (60, 80, 3), np.uint8)
      tf.io.write_file(str(tmp_path / 'train' / label / f'{i}.jpg'),
                       tf.io.encode_jpeg(image))
  report = bench.benchmark_data(
      f'folder:{tmp_path}', config=imagenet_mobilenet_v2.get_config(),
      resolution=32, batch_size=4, steps=5, warmup=1)
  assert report['resolution'] == 32 and report['antialias'] is False
  assert abs(report['img_per_sec'] - 4 / (report['step_ms_median'] / 1000)) < (
      1e-6 * report['img_per_sec'] + 1e-3)
  assert report['cpu_ms_per_image'] > 0 and report['cores_busy'] > 0


def test_text_times_keep_three_significant_digits():
  # 0.1 ms rounding hid int8 against float at small sizes.
  assert [bench._ms(x) for x in (0.41234, 0.4449, 4.1234, 41.234, 412.34,
                                 1234.4)] == [
      '0.412', '0.445', '4.12', '41.2', '412', '1234']
