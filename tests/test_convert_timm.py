"""timm state dicts -> our models (`convert_timm`, `convert --timm_*`).

Reference outputs are timm 1.0.31's own: tests/fixtures/timm/NAME.json holds,
for each timm model name, the state dict's tensor names and shapes, a seed
and timm's logits for seeded stand-in weights (`timm_weights`) and a seeded
image, recorded by tests/fixtures/make_timm_fixtures.py (torch + timm, run by
hand; CI has neither). Here the same weights are made again with numpy,
written as .safetensors, converted and run.
"""

import json
import pathlib

from flax import traverse_util
import jax
import numpy as np
import pytest
import safetensors.numpy

from mobilenet_jax import convert
from mobilenet_jax import convert_timm
from mobilenet_jax import export
from mobilenet_jax import models
from mobilenet_jax import pretrained
from mobilenet_jax import state as state_lib
from mobilenet_jax import train

import timm_weights
from conftest import restored_state, run_module, tiny_config

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'timm'


def _fixture(name: str) -> dict:
  return json.loads((FIXTURES / f'{name}.json').read_text())


def _state_dict(name: str) -> dict:
  fixture = _fixture(name)
  return timm_weights.state_dict(fixture['seed'], fixture['tensors'])


def _checkpoint(name: str, directory: pathlib.Path) -> str:
  path = directory / f'{name}.safetensors'
  safetensors.numpy.save_file(_state_dict(name), path)
  return str(path)


# Every family (hybrids with Mobile MQA and layer scale included), both
# paddings ('same': tf_*), widths below and above 1. The fast ones run on
# every `make test-fast`; the rest, and every model's native resolution where
# it is not 224, are slow.
FAST = (
    ('mobilenetv2_050', 224),  # symmetric padding, width < 1
    ('mobilenetv3_small_050', 224),
    ('tf_mobilenetv3_small_minimal_100', 224),  # 'same', epsilon 1e-3
    ('mobilenetv4_conv_small_035', 224),
)
SLOW = (
    ('mobilenetv1_100', 224), ('mobilenetv1_125', 224),
    ('mobilenetv2_100', 224), ('mobilenetv2_140', 224),
    ('mobilenetv3_large_100', 224), ('mobilenetv3_small_075', 224),
    ('tf_mobilenetv3_large_075', 224), ('tf_mobilenetv3_small_100', 224),
    ('tf_mobilenetv3_large_minimal_100', 224),
    ('mobilenetv4_conv_small', 224),
    ('mobilenetv4_conv_medium', 224), ('mobilenetv4_conv_medium', 256),
    ('mobilenetv4_conv_large', 224), ('mobilenetv4_conv_large', 384),
    ('mobilenetv4_hybrid_medium', 224), ('mobilenetv4_hybrid_medium', 256),
    ('mobilenetv4_hybrid_medium_075', 224),
    ('mobilenetv4_hybrid_large', 224), ('mobilenetv4_hybrid_large', 384),
)


def _assert_timm_logits(name: str, resolution: int, tmp_path):
  fixture = _fixture(name)
  output = tmp_path / 'converted'
  convert.convert_timm_file(_checkpoint(name, tmp_path), name, str(output))
  model_kwargs, variables = pretrained.load_converted(str(output))
  model = models.create_model(**model_kwargs)
  images = timm_weights.images(fixture['seed'], resolution)
  logits = np.asarray(jax.jit(model.apply)(
      variables, images.transpose(0, 2, 3, 1)))[0]
  expected = np.asarray(fixture['logits'][str(resolution)])
  np.testing.assert_allclose(logits, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('name, resolution', FAST)
def test_logits_match_timm(name, resolution, tmp_path):
  _assert_timm_logits(name, resolution, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize('name, resolution', SLOW)
def test_logits_match_timm_all_families(name, resolution, tmp_path):
  _assert_timm_logits(name, resolution, tmp_path)


def test_every_recorded_model_is_tested():
  recorded = {p.stem for p in FIXTURES.glob('*.json')}
  cases = [getattr(case, 'values', case) for case in FAST + SLOW]
  tested = {name for name, _ in cases}
  assert recorded == tested
  for name in recorded:
    native = _fixture(name)['preprocessing']['input_size']
    assert (name, native) in cases, (name, native)


@pytest.mark.parametrize('name',
                         sorted(p.stem for p in FIXTURES.glob('*.json')))
def test_names_give_timms_preprocessing(name):
  """The table equals the pretrained_cfg timm recorded with its logits."""
  assert (convert_timm.parse_name(name).preprocessing
          == _fixture(name)['preprocessing'])


@pytest.mark.parametrize('timm_model, ours, alpha, padding, epsilon', [
    ('mobilenetv1_125', 'mobilenet_v1', 1.25, 'symmetric', 1e-5),
    ('mobilenetv2_035', 'mobilenet_v2', 0.35, 'symmetric', 1e-5),
    ('mobilenetv3_large_075', 'mobilenet_v3_large', 0.75, 'symmetric', 1e-5),
    ('tf_mobilenetv3_small_minimal_100', 'mobilenet_v3_small_minimal', 1.0,
     'same', 1e-3),
    ('mobilenetv4_conv_small_050', 'mobilenet_v4_conv_small', 0.5,
     'symmetric', 1e-5),
    ('mobilenetv4_conv_large', 'mobilenet_v4_conv_large', 1.0, 'symmetric',
     1e-5),
    ('mobilenetv4_hybrid_medium_075', 'mobilenet_v4_hybrid_medium', 0.75,
     'symmetric', 1e-5),
])
def test_name_gives_model_alpha_padding_epsilon(timm_model, ours, alpha,
                                                padding, epsilon):
  parsed = convert_timm.parse_name(timm_model)
  assert (parsed.name, parsed.alpha, parsed.padding, parsed.bn_epsilon) == (
      ours, alpha, padding, epsilon)


@pytest.mark.parametrize('timm_model, reason', [
    ('mobilenetv2_110d', 'depth multiplier'),
    ('mobilenetv3_large_150d', 'depth multiplier'),
    ('mobilenetv1_100h', 'head conv'),
    ('mobilenetv4_conv_aa_medium', 'anti-aliased'),
    ('mobilenetv4_conv_blur_medium', 'anti-aliased'),
    ('resnet50', 'timm_model must be a timm MobileNet name'),
])
def test_uncovered_names_say_why(timm_model, reason):
  with pytest.raises(ValueError, match=reason):
    convert_timm.parse_name(timm_model)


def test_checkpoint_files_are_checked(tmp_path):
  with pytest.raises(ValueError, match='is not a file'):
    convert_timm.read_state_dict(str(tmp_path / 'missing.safetensors'))
  (tmp_path / 'model.npz').write_bytes(b'')
  with pytest.raises(ValueError, match=r'must end in \.safetensors, \.pth'):
    convert_timm.read_state_dict(str(tmp_path / 'model.npz'))


def test_a_tensor_with_another_name_is_named():
  state = _state_dict('mobilenetv3_small_050')
  state['blocks.1.0.conv_pw.kernel'] = state.pop('blocks.1.0.conv_pw.weight')
  with pytest.raises(ValueError,
                     match=r"^cannot place timm tensors "
                     r"blocks\.1\.0\.conv_pw\.kernel \(\d+, \d+, 1, 1\)") as e:
    convert_timm.from_timm(state, 'mobilenetv3_small_050')
  assert '\n' not in str(e.value)


def test_a_tensor_with_another_shape_is_named():
  state = _state_dict('mobilenetv3_small_050')
  state['blocks.1.0.conv_pw.weight'] = state['blocks.1.0.conv_pw.weight'][1:]
  with pytest.raises(ValueError,
                     match=r"^timm tensor 'blocks\.1\.0\.conv_pw\.weight' has "
                     r"shape .* where mobilenet_v3_small \(alpha=0\.5\) "
                     r"'block_2/expand/conv' \(conv\) has kernel") as e:
    convert_timm.from_timm(state, 'mobilenetv3_small_050')
  assert '\n' not in str(e.value)


def test_another_width_names_the_first_tensor_that_differs():
  with pytest.raises(ValueError, match=r"^timm tensor '[\w.]+' has shape"):
    convert_timm.from_timm(_state_dict('mobilenetv3_small_050'),
                           'mobilenetv3_small_075')


def test_a_module_with_another_name_is_named():
  state = _state_dict('mobilenetv1_100')
  for key in [k for k in state if k.startswith('classifier.')]:
    state[key.replace('classifier', 'head_fc')] = state.pop(key)
  with pytest.raises(ValueError, match=r"^cannot place timm module 'head_fc'"):
    convert_timm.from_timm(state, 'mobilenetv1_100')


def test_a_missing_block_names_where_the_layers_part():
  state = {k: v for k, v in _state_dict('mobilenetv1_100').items()
           if not k.startswith('blocks.4.1.')}  # the last of 13 blocks
  with pytest.raises(ValueError,
                     match=r"^timm module 'classifier' \(dense\) lines up "
                     r"with mobilenet_v1 \(alpha=1.0\) 'block_13/depthwise"):
    convert_timm.from_timm(state, 'mobilenetv1_100')


def test_export_takes_timms_preprocessing(tmp_path):
  name = 'mobilenetv4_conv_medium'
  output = tmp_path / 'converted'
  convert.convert_timm_file(_checkpoint(name, tmp_path), name, str(output))
  source = export.load_source(str(output))
  expected = _fixture(name)['preprocessing']
  assert (source.resolution, source.mean, source.std) == (
      expected['input_size'], tuple(expected['mean']), tuple(expected['std']))
  assert (source.model_kwargs['padding'],
          source.model_kwargs['bn_epsilon']) == ('symmetric', 1e-5)


@pytest.mark.multiprocess
def test_cli_converts_with_hub_config_and_refuses_mistakes(tmp_path):
  name = 'mobilenetv4_conv_small_035'
  checkpoint_file = _checkpoint(name, tmp_path)
  hub_config = tmp_path / 'config.json'
  hub_config.write_text(json.dumps({'architecture': name, 'pretrained_cfg': {
      'input_size': [3, 256, 256], 'crop_pct': 1.0}}))
  output = tmp_path / 'out'
  result = run_module('mobilenet_jax.convert',
                      f'--timm_checkpoint={checkpoint_file}',
                      f'--timm_model={name}', f'--output={output}',
                      f'--timm_config={hub_config}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert ('--config.model.padding=symmetric --config.model.bn_epsilon=1e-05 '
          '--config.data.base_resolution=256 '
          '--config.data.eval_crop_fraction=1.0 '
          '--config.data.mean=0.5,0.5,0.5 --config.data.std=0.5,0.5,0.5'
          in result.stdout)
  recorded = json.loads((output / pretrained.PREPROCESSING_FILE).read_text())
  assert recorded == {**_fixture(name)['preprocessing'], 'input_size': 256,
                      'crop_pct': 1.0}
  meta = json.loads((output / pretrained.MODEL_FILE).read_text())
  assert (meta['model'], meta['alpha'], meta['padding'],
          meta['bn_epsilon']) == ('mobilenet_v4_conv_small', 0.35, 'symmetric',
                                  1e-5)
  # A second conversion into the same folder, and a name we do not cover:
  # exit status 2, one line, nothing written.
  for args, message in [
      ((f'--timm_model={name}', f'--output={output}'), 'is not empty'),
      (('--timm_model=mobilenetv2_110d', f'--output={tmp_path / "new"}'),
       'depth multiplier')]:
    result = run_module('mobilenet_jax.convert',
                        f'--timm_checkpoint={checkpoint_file}', *args)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines()
              if line.startswith('error:')]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert result.stderr.strip().endswith(errors[0])
  assert not (tmp_path / 'new').exists()
  assert json.loads(
      (output / pretrained.PREPROCESSING_FILE).read_text()) == recorded


@pytest.mark.slow
def test_fine_tunes_from_a_converted_timm_checkpoint(data_dir, tmp_path):
  """init_from a timm conversion, configured by the command's printed
  overrides, with a new head (shapes' classes) trains; with the backbone
  frozen, it stays the converted one exactly."""
  name = 'mobilenetv3_small_050'
  converted = tmp_path / 'converted'
  summary = convert.convert_timm_file(_checkpoint(name, tmp_path), name,
                                      str(converted))
  overrides = dict(arg.removeprefix('--config.').split('=', 1)
                   for arg in summary.split() if arg.startswith('--config.'))
  config = tiny_config(data_dir, init_from=str(converted),
                       freeze_backbone=True, **{
                           'model.name': overrides['model.name'],
                           'model.alpha': float(overrides['model.alpha']),
                           'model.padding': overrides['model.padding'],
                           'model.bn_epsilon':
                               float(overrides['model.bn_epsilon'])})
  config.data.mean = tuple(map(float, overrides['data.mean'].split(',')))
  config.data.std = tuple(map(float, overrides['data.std'].split(',')))
  train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  tuned = restored_state(str(tmp_path / 'workdir'))
  _, source = pretrained.load_converted(str(converted))
  assert int(tuned.step) == config.num_train_steps
  new = traverse_util.flatten_dict(tuned.params)
  old = traverse_util.flatten_dict(source['params'])
  assert new['classifier', 'kernel'].shape == (1024, 10)  # shapes' classes
  # freeze_backbone trains the top layers (V3's head Dense and the new
  # classifier) only.
  backbone = [k for k in old if k[0] not in state_lib.TOP_LAYERS]
  assert backbone and set(backbone) == {
      k for k in new if k[0] not in state_lib.TOP_LAYERS}
  for key in backbone:
    np.testing.assert_array_equal(old[key], new[key], err_msg=str(key))
  old_stats = traverse_util.flatten_dict(source['batch_stats'])
  new_stats = traverse_util.flatten_dict(tuned.batch_stats)
  for key, value in old_stats.items():
    np.testing.assert_array_equal(value, new_stats[key], err_msg=str(key))
