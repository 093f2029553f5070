"""The TPU compile report: facts read off HLO text, the command without
libtpu, and (where libtpu is installed) the real steps compiled for a TPU
slice."""

import importlib.util

import pytest

from mobilenet_jax import tpu_compile

from conftest import run_module

HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None

# A hand-written module: two fusions inside, one grouped and one plain
# convolution, a tuple all-reduce of two f32 values and one of a bf16 value,
# and in the entry computation two f32 NHWC buffers of batch 8 (one in a
# fusion's body, which is not a buffer) and a while loop.
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
  %c = bf16[8,16,16,6]{3,2,1,0} convolution(%image, %w), feature_group_count=1
  %f = f32[8,16,16,6]{3,2,1,0} fusion(%c), kind=kLoop, calls=%fused_computation
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
  }


@pytest.mark.skipif(HAS_LIBTPU, reason='libtpu is installed')
def test_without_libtpu_the_command_says_how_to_get_it():
  result = run_module('mobilenet_jax.tpu_compile',
                      '--config=configs/tpu.py:recipe=imagenet_mobilenet_v2')
  assert result.returncode == 2
  assert result.stderr.strip() == f'error: {tpu_compile.INSTALL_HINT}'


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install "
                    "-e '.[tpu]')")
def test_tiny_v2_compiles_for_a_v5e_slice_with_grouped_depthwise():
  from configs import tpu  # pylint: disable=g-import-not-at-top
  config = tpu.get_config('recipe=imagenet_mobilenet_v2,alpha=0.35,'
                          'batch_size=32')
  config.data.base_resolution = 64
  report = tpu_compile.compile_steps(config, 'v5e:2x2', num_classes=10)
  assert report['chips'] == 4 and report['batch_per_chip'] == 8
  assert report['ops'] == 'reference' and report['dtype'] == 'bfloat16'
  # 17 depthwise layers: forward only in eval, forward and input gradient
  # in training; no loops; in memory, the input image is the only f32
  # activation.
  assert report['eval']['grouped_convolutions'] == 17
  assert report['train']['grouped_convolutions'] == 34
  for step in ('train', 'eval'):
    assert report[step]['while_loops'] == 0
    assert report[step]['f32_activation_buffers'] == ['f32[8,64,64,3]']
    assert report[step]['flops'] > 0 and report[step]['temp_bytes'] > 0
  assert report['train']['all_reduces'] > report['eval']['all_reduces']


def test_an_unknown_topology_is_a_one_line_error():
  if not HAS_LIBTPU:
    pytest.skip("needs libtpu (pip install -e '.[tpu]')")
  with pytest.raises(ValueError, match='topology must name a TPU slice'):
    tpu_compile.topology_mesh('v9x:1x1')
