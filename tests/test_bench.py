"""The benchmark command: one JSON object whose numbers agree with each other."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_json_is_one_consistent_object():
  command = [sys.executable, '-m', 'mobilenet_jax.bench',
             '--model=mobilenet_v3_small', '--alpha=0.35', '--resolution=32',
             '--batch_size=2', '--mode=infer', '--depthwise_impl=shifted',
             '--steps=5', '--warmup=1', '--json']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)  # exactly one object, nothing else
  for key in ('img_per_sec', 'step_ms_median', 'compile_s', 'peak_mem_mb'):
    assert report[key] > 0, key
  # Throughput is the batch over the median step time.
  assert abs(report['img_per_sec'] - 2 / (report['step_ms_median'] / 1000)) < (
      1e-6 * report['img_per_sec'] + 1e-3)


def test_bench_rejects_an_unknown_model():
  result = subprocess.run(
      [sys.executable, '-m', 'mobilenet_jax.bench', '--model=resnet50',
       '--json'], cwd=REPO, capture_output=True, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, timeout=600)
  assert result.returncode != 0
  assert 'model name must be one of' in result.stderr
