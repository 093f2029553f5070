"""The TPU compile report: facts read off HLO text, the command without
libtpu, and the real steps compiled for a TPU slice by the command run with
a python that has libtpu: $MOBILENET_JAX_TPU_PYTHON (`make test` sets up
.venv-tpu, libtpu in a side venv that sees .venv's packages, and points the
variable at it), or this python if it has libtpu itself."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mobilenet_jax import tpu_compile

from conftest import REPO
from conftest import run_module

HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
TPU_PYTHON_VARIABLE = 'MOBILENET_JAX_TPU_PYTHON'

# A hand-written module: two fusions inside, one grouped and one plain
# convolution, a tuple all-reduce of two f32 values and one of a bf16 value,
# and in the entry computation two f32 NHWC buffers of batch 8 (one in a
# fusion's body, which is not a buffer), an f32 image parameter, a while
# loop and two instructions' estimated cycles.
HLO = """\
HloModule jit_step

%fused_computation (p: f32[8,4,4,6]) -> f32[8,4,4,6] {
  %p = f32[8,4,4,6]{3,2,1,0} parameter(0)
  %inner = f32[8,9,9,9]{3,2,1,0} broadcast(%p)
  ROOT %conv = f32[8,4,4,6]{3,2,1,0} convolution(%p, %p), feature_group_count=6
}

ENTRY %main (image: f32[8,32,32,3], w: bf16[3,3,3,6]) -> f32[6] {
  %image = f32[8,32,32,3]{3,2,1,0} parameter(0)
  %w = bf16[3,3,3,6]{3,2,1,0} parameter(1)
  %c = bf16[8,16,16,6]{3,2,1,0} convolution(%image, %w), feature_group_count=1, backend_config={"estimated_cycles":"30"}
  %f = f32[8,16,16,6]{3,2,1,0} fusion(%c), kind=kLoop, calls=%fused_computation, backend_config={"flag_configs":[],"estimated_cycles":"120"}
  %ar = (f32[6]{0}, f32[6]{0}) all-reduce(%f, %f), channel_id=1
  %ar2 = bf16[3,3,3,6]{3,2,1,0} all-reduce-start(%w), channel_id=2
  %loop = (s32[]) while(%t), condition=%cond, body=%body
  ROOT %out = f32[6]{0} get-tuple-element(%ar), index=0
}
"""


def test_hlo_facts_counts_what_the_text_holds():
  facts = tpu_compile.hlo_facts(HLO, batch_per_chip=8)
  assert facts == {
      'grouped_convolutions': 1,
      'while_loops': 1,
      'all_reduces': 2,
      'all_reduced_types': {'bf16': 1, 'f32': 2},
      'f32_activation_buffers': ['f32[8,16,16,6]', 'f32[8,32,32,3]'],
      'image_parameters': ['f32[8,32,32,3]'],
      'estimated_cycles': 150,
  }
  assert tpu_compile.hlo_facts(HLO.replace('estimated_cycles', 'x'),
                               8)['estimated_cycles'] is None


@pytest.mark.skipif(HAS_LIBTPU, reason='libtpu is installed')
def test_without_libtpu_the_command_says_how_to_get_it():
  result = run_module('mobilenet_jax.tpu_compile',
                      '--config=configs/tpu.py:recipe=imagenet_mobilenet_v2')
  assert result.returncode == 2
  assert result.stderr.strip() == f'error: {tpu_compile.INSTALL_HINT}'


def _tpu_compile(*flags):
  """`python -m mobilenet_jax.tpu_compile *flags` with a python that has
  libtpu (skips with the reason when there is none)."""
  python = os.environ.get(TPU_PYTHON_VARIABLE)
  if python and not os.path.exists(python):
    pytest.skip(f'{TPU_PYTHON_VARIABLE}={python} does not exist (make '
                'setup-tpu creates .venv-tpu/bin/python)')
  if not python:
    if not HAS_LIBTPU:
      pytest.skip(f'needs libtpu: set {TPU_PYTHON_VARIABLE} to a python that '
                  "has it (make test sets up .venv-tpu) or pip install -e "
                  "'.[tpu]'")
    python = sys.executable
  # Nothing runs on a TPU: JAX on the CPU backend; libtpu only compiles, so
  # its one-process-per-host lock and metadata-server queries are moot.
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'ALLOW_MULTIPLE_LIBTPU_LOAD': '1', 'TPU_SKIP_MDS_QUERY': '1'}
  return subprocess.run([python, '-m', 'mobilenet_jax.tpu_compile', *flags],
                        cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_tpu_config_v2_compiles_for_a_v5e_slice_as_a_tpu_wants():
  """configs/tpu.py's V2 (bfloat16, `reference` ops), shrunk to alpha 0.35,
  64 px and 8 images per chip (each fact below holds at full size too; see
  docs/performance.md), compiled for v5e:2x2; and beside it the same step
  with the network in plain Flax."""
  def compile_report(*extra):
    result = _tpu_compile(
        '--config=configs/tpu.py:recipe=imagenet_mobilenet_v2,alpha=0.35,'
        'batch_size=32', '--config.data.base_resolution=64',
        '--topology=v5e:2x2', '--num_classes=10', '--json', *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    # No banner twice, no start-up lines of libtpu's that read as errors.
    assert result.stderr == ''
    return json.loads(result.stdout.strip().splitlines()[-1])

  report = compile_report()
  # The network in plain Flax (every nn.Conv and nn.Dense as Flax builds
  # it, bfloat16 weight gradients).
  plain = compile_report('--mode=train',
                         '--config.model.float32_weight_grads=false')
  assert report['chips'] == 4 and report['batch_per_chip'] == 8
  assert report['ops'] == 'reference' and report['dtype'] == 'bfloat16'
  train, evaluation = report['train'], report['eval']
  # 17 depthwise layers, each one grouped convolution in the forward pass
  # (eval); training adds one per input gradient (kernel gradients are
  # batch-grouped, not feature-grouped).
  assert evaluation['grouped_convolutions'] == 17
  assert train['grouped_convolutions'] == 34
  for step in (train, evaluation):
    # No loops at all (the dropout RNG is unrolled too); uint8 images in,
    # normalised on the device: no float32 activation in memory.
    assert step['while_loops'] == 0
    assert step['image_parameters'] == ['u8[8,64,64,3]']
    assert step['f32_activation_buffers'] == []
    assert step['flops'] > 0 and step['temp_bytes'] > 0
    assert step['estimated_cycles'] > 0
  # Every all-reduce is float32: BatchNorm statistics and the gradients
  # (weight gradients emit float32: layers.float32_weight_grad).
  assert train['all_reduces'] > evaluation['all_reduces']
  assert set(train['all_reduced_types']) == {'f32'}, train
  # Plain Flax all-reduces bfloat16 weight gradients; float32 ones cost no
  # more than 5% in the compiler's estimated cycles.
  assert 'bf16' in plain['train']['all_reduced_types']
  assert train['estimated_cycles'] <= 1.05 * plain['train']['estimated_cycles']


@pytest.mark.slow
def test_an_unknown_topology_is_a_one_line_error():
  result = _tpu_compile(
      '--config=configs/tpu.py:recipe=imagenet_mobilenet_v2',
      '--topology=v9x:1x1')
  assert result.returncode == 2
  [line] = result.stderr.strip().splitlines()
  assert line.startswith('error: topology must name a TPU slice, e.g. v5e:2x2')
