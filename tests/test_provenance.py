"""Provenance: what each training records in WORKDIR/provenance.json, and
the code hash in a sweep's results.csv."""

import csv
import importlib.util
import json
import subprocess

import flax
import jax
import jaxlib
import optax
import pytest

from conftest import REPO, tiny_config
from mobilenet_jax import provenance
from mobilenet_jax import sweep_code
from mobilenet_jax import sweep_summary
from mobilenet_jax import train
from test_sweep import fabricate_run


def test_package_versions_are_the_imported_ones():
  versions = provenance.package_versions()
  assert list(versions) == ['jax', 'jaxlib', 'libtpu', 'flax', 'optax',
                            'orbax-checkpoint', 'tensorflow']
  assert versions['jax'] == jax.__version__
  assert versions['jaxlib'] == jaxlib.__version__
  assert versions['flax'] == flax.__version__
  assert versions['optax'] == optax.__version__
  # tensorflow-cpu's distribution provides tensorflow here.
  assert versions['tensorflow'].startswith('2.')
  has_libtpu = importlib.util.find_spec('libtpu') is not None
  assert (versions['libtpu'] is not None) == has_libtpu


def test_code_identity_of_a_git_checkout_is_what_a_sweep_would_ship(
    tmp_path):
  identity = provenance.code_identity(REPO)
  head = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'],
                        capture_output=True, text=True, check=True)
  assert identity['git_commit'] == head.stdout.strip()
  assert identity['code_hash'] == sweep_code.pack(str(tmp_path),
                                                  REPO).code_hash
  # Neither shipped nor a checkout (an installed package): nulls.
  assert provenance.code_identity(str(tmp_path)) == {
      'code_hash': None, 'git_commit': None, 'git_dirty': None}


def test_record_keeps_earlier_starts_and_only_process_0_writes(
    tmp_path, monkeypatch):
  monkeypatch.setenv('MOBILENET_JAX_VM', 'tpu-a')
  monkeypatch.setenv('MOBILENET_JAX_CHIPS', '0,1')
  provenance.record(str(tmp_path))
  first = json.loads((tmp_path / 'provenance.json').read_text())
  assert (first['vm'], first['chips']) == ('tpu-a', '0,1')
  assert first['device_kind'] == jax.devices()[0].device_kind
  assert first['device_count'] == jax.device_count()
  monkeypatch.setenv('MOBILENET_JAX_VM', 'tpu-b')  # resumed elsewhere
  provenance.record(str(tmp_path))
  second = json.loads((tmp_path / 'provenance.json').read_text())
  assert second['vm'] == 'tpu-b'
  assert second['earlier_starts'] == [first]
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  provenance.record(str(tmp_path / 'other'))
  assert not (tmp_path / 'other').exists()


@pytest.mark.slow  # about 60 s here: one compile of a training step
def test_a_plain_training_records_its_provenance(data_dir, tmp_path):
  train.train_and_evaluate(tiny_config(data_dir, num_train_steps=1),
                           str(tmp_path))
  record = json.loads((tmp_path / 'provenance.json').read_text())
  assert record['git_commit'] == provenance.code_identity()['git_commit']
  assert len(record['git_commit']) == 40
  assert record['packages']['jax'] == jax.__version__


def test_summarize_carries_the_code_hash_and_warns_on_mixed_code(
    tmp_path, data_dir, capsys):
  for index, (name, code_hash) in enumerate([('a', 'h1'), ('b', 'h1'),
                                             ('c', None)]):
    fabricate_run(tmp_path, name, index, {'model.alpha': 0.25 * (index + 1)},
                  'running', data_dir)
    if code_hash:
      (tmp_path / name / 'provenance.json').write_text(
          json.dumps({'code_hash': code_hash}))
  sweep_summary.summarize(str(tmp_path))
  with open(tmp_path / 'results.csv') as f:
    assert [r['code_hash'] for r in csv.DictReader(f)] == ['h1', 'h1', '']
  assert capsys.readouterr().err == ''  # one code (and a run not started)
  (tmp_path / 'b' / 'provenance.json').write_text(
      json.dumps({'code_hash': 'h2'}))
  sweep_summary.summarize(str(tmp_path))
  warning = capsys.readouterr().err
  assert warning.count('\n') == 1
  assert 'ran 2 different code trees' in warning

