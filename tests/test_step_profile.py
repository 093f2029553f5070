"""The step profile: XLA ops of a real trace attributed to model layers."""

import pytest

from configs import imagenet_mobilenet_v2
from mobilenet_jax import bench
from mobilenet_jax import step_profile


@pytest.mark.parametrize('op_name, expected', [
    # JAX name stacks: a jitted apply, and a train step under grad.
    ('jit(step)/MobileNet/block_1/depthwise/bn/rsqrt',
     ('forward', 'depthwise/bn')),
    ('jit(train_step)/jvp(MobileNet)/stem/conv/conv_general_dilated',
     ('forward', 'stem/conv')),
    ('jit(train_step)/transpose(jvp(MobileNet))/block_2/expand/bn/reduce_sum',
     ('backward', 'expand/bn')),
    ('jit(train_step)/transpose(jvp(MobileNet))/block_17/depthwise/conv/'
     'while/body/closed_call/mul', ('backward', 'depthwise/conv')),
    ('jit(step)/MobileNet/block_18/conv/dot_general', ('forward', 'conv')),
    ('jit(step)/MobileNet/block_3/add', ('forward', 'add')),
    ('jit(step)/MobileNet/block_3/block_3.residual/add', ('forward', 'add')),
    ('jit(train_step)/add', ('forward', step_profile.OUTSIDE_MODEL)),
])
def test_layer_of(op_name, expected):
  assert step_profile.layer_of(op_name) == expected


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['train', 'infer'])
def test_bench_trace_attributes_the_step_to_its_layers(mode, tmp_path):
  result = bench.benchmark_model(
      'mobilenet_v2', config=imagenet_mobilenet_v2.get_config(), alpha=0.35,
      resolution=32, batch_size=2, mode=mode,
      ops='cpu', steps=5, warmup=1, trace_dir=str(tmp_path))
  rows = {(row['pass'], row['layer']): row['ms_per_step']
          for row in result['layer_ms']}
  assert all(ms >= 0 for ms in rows.values())
  # Every layer kind of the V2 forward pass ran and was found.
  for layer in ('stem/conv', 'stem/bn', 'expand/conv', 'depthwise/conv',
                'project/conv', 'project/bn', 'conv', 'bn', 'add',
                'classifier'):
    assert ('forward', layer) in rows, layer
  passes = {pass_ for pass_, _ in rows}
  assert passes == ({'forward', 'backward'} if mode == 'train'
                    else {'forward'})
  if mode == 'train':
    assert ('backward', 'depthwise/conv') in rows
    assert ('forward', step_profile.OUTSIDE_MODEL) in rows  # optimizer, EMA
