"""The experiments' tables (cost columns at the paper's setting against the
papers' published numbers, our measured columns from sweep rows) and their
command lines."""

import pytest

from configs.sweeps import v1_width_resolution
from configs.sweeps import v2_expansion
from experiments import expansion
from experiments import separable_vs_standard
from experiments import width_resolution
from mobilenet_jax import sweep_summary

from conftest import run_module


def parse(table):
  """A markdown table as a list of {header: cell}."""
  header, _, *lines = table.strip().splitlines()
  names = [cell.strip() for cell in header.strip('|').split('|')]
  return [dict(zip(names, (c.strip() for c in line.strip('|').split('|'))))
          for line in lines]


def test_width_resolution_costs_match_tables_6_and_7():
  runs = [{'model.name': 'mobilenet_v1', 'model.alpha': a, 'data.rho': r}
          for a in v1_width_resolution.ALPHAS
          for r in v1_width_resolution.RHOS if 1.0 in (a, r)]
  finished = sweep_summary.Row('alpha_0.5-rho_1.0', runs[5], 'finished',
                       resolution=64, top1=0.8766, img_per_sec=123.4)
  results = [(run, finished if run == finished.overrides else None)
             for run in runs]
  (title6, table6), (title7, table7) = width_resolution.tables(results,
                                                               'shapes')
  assert 'Table 6' in title6 and 'Table 7' in title7
  width, resolution = parse(table6), parse(table7)
  # Paper table 6 (alpha: MACs, params) and table 7 (px: MACs).
  assert [(r['alpha'], r['paper MACs (M)'], r['paper params (M)'])
          for r in width] == [('1', '569', '4.2'), ('0.75', '325', '2.6'),
                              ('0.5', '149', '1.3'), ('0.25', '41', '0.5')]
  assert [(r['resolution (px)'], r['paper MACs (M)']) for r in resolution] == [
      ('224', '569'), ('192', '418'), ('160', '290'), ('128', '186')]
  for row in width + resolution:
    assert float(row['ours MACs (M)']) == pytest.approx(
        float(row['paper MACs (M)']), rel=0.01)
    assert float(row['ours params (M)']) == pytest.approx(
        float(row['paper params (M)']), abs=0.05)
  assert [r['ours top-1 (%), shapes'] for r in width] == ['', '', '87.7', '']
  assert width[2]['ours: trained at (px)'] == '64'
  assert width[2]['ours: img/s'] == '123'


def test_separable_vs_standard_costs_match_table_4():
  results = [({'model.name': name}, None)
             for name in ('mobilenet_v1', 'mobilenet_v1_standard')]
  [(_, table)] = separable_vs_standard.tables(results, 'shapes')
  rows = parse(table)
  assert [(r['paper'], r['paper MACs (M)'], r['paper params (M)'])
          for r in rows] == [('Conv MobileNet', '4866', '29.3'),
                             ('MobileNet', '569', '4.2')]
  for row in rows:
    assert float(row['ours MACs (M)']) == pytest.approx(
        float(row['paper MACs (M)']), rel=0.01)
    assert float(row['ours params (M)']) == pytest.approx(
        float(row['paper params (M)']), abs=0.05)


def test_expansion_costs_grow_linearly_with_t():
  results = [({'model.name': 'mobilenet_v2', 'model.expansion': t}, None)
             for t in v2_expansion.EXPANSIONS]
  [(_, table)] = expansion.tables(results, 'shapes')
  rows = {float(r['t']): r for r in parse(table)}
  # The paper's only point: t = 6, 300M MACs (V2 paper table 4).
  assert rows[6.0]['paper MACs (M)'] == '300'
  assert float(rows[6.0]['ours MACs (M)']) == pytest.approx(300, rel=0.02)
  assert [rows[t]['paper top-1 (%), ImageNet'] for t in (1.0, 2.0, 4.0, 8.0)
         ] == ['-'] * 4
  # For t >= 2 every expanded layer (1x1 expansion, depthwise, projection)
  # is linear in t, so equal steps of t add equal costs.
  macs = [float(rows[t]['ours MACs (M)']) for t in (2.0, 4.0, 6.0, 8.0)]
  steps = [b - a for a, b in zip(macs, macs[1:])]
  assert max(steps) - min(steps) <= 2  # rounding of three cells
  # t = 1 drops the expansion conv as well: below the linear extrapolation.
  assert float(rows[1.0]['ours MACs (M)']) < macs[0] - steps[0] / 2


def _experiment(module, *args):
  return run_module(module, '--dry_run', *args, timeout=300)


def test_experiment_dry_run_adds_its_own_flags_to_every_run(tmp_path):
  result = _experiment('experiments.separable_vs_standard',
                       f'--workdir={tmp_path}', '--steps=7', '--rho=0.5')
  assert result.returncode == 0, result.stderr[-2000:]
  commands = result.stdout.splitlines()
  assert [c.split('--config.model.name=')[1].split()[0] for c in commands] == [
      'mobilenet_v1', 'mobilenet_v1_standard']
  for command in commands:
    assert '--config.data.rho=0.5' in command
    assert '--config.num_train_steps=7' in command
  assert not list(tmp_path.iterdir())  # a dry run trains nothing


def test_experiment_refuses_a_config_override_of_its_own_flag(tmp_path):
  result = _experiment('experiments.separable_vs_standard',
                       f'--workdir={tmp_path}', '--config.data.rho=0.5')
  assert result.returncode == 1
  assert 'drop --config.data.rho' in result.stderr


def test_latency_default_models_are_the_registry():
  from experiments import latency  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import models  # pylint: disable=g-import-not-at-top
  assert sorted(latency.DEFAULT_MODELS) == sorted(models.REGISTRY)
  assert set(latency.KERAS) <= set(models.REGISTRY)


def _section(text, heading):
  """The body of a report's '## heading' section."""
  return text.split(f'## {heading}\n', 1)[1].split('\n## ', 1)[0].strip()


@pytest.mark.slow
def test_latency_experiment_at_a_tiny_setting(tmp_path):
  output = tmp_path / 'latency.md'
  result = run_module('experiments.latency', '--models=mobilenet_v3_small',
                      '--resolution=32', '--runs=5', '--warmup=1',
                      '--calibration_images=2', f'--output={output}',
                      timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  text = output.read_text()
  assert text.startswith('# On-device latency')
  assert '--models=mobilenet_v3_small' in text  # the command
  rows = parse(_section(text, 'Latency'))
  assert [(r['model'], r['px'], r['quantization']) for r in rows] == [
      ('mobilenet_v3_small', '32', 'none'), ('mobilenet_v3_small', '32', 'int8')]
  for row in rows:
    for column in ('ours ms (quartiles)', 'Keras ms (quartiles)'):
      median, quartiles = row[column].split(' ')
      low, high = quartiles.strip('()').split('-')
      assert 0 < float(low) <= float(median) <= float(high)
    assert float(row['ours / Keras']) > 0
  assert rows[0]['paper Pixel-1 ms (float)'] == '15.8'
  assert rows[0]['int8 / float (ours)'] == '-'
  assert float(rows[1]['int8 / float (ours)']) > 0
  relative = parse(_section(text, 'Float latency relative to MobileNetV2'))
  assert relative == [{'model': 'mobilenet_v3_small', 'ours / V2': '-',
                       'Keras / V2': '-', 'paper (Pixel 1) / V2': '0.25'}]
  ops = _section(text, 'Ops by type').splitlines()
  assert len(ops) == 4  # ours and Keras', float and int8
  for line in ops:
    # The pools are one op each: ours AVERAGE_POOL_2D, Keras' MEAN.
    assert 'SUM' not in line and 'DEPTHWISE_CONV_2D 11' in line
  assert 'AVERAGE_POOL_2D' in ops[0] and 'MEAN' in ops[1]
