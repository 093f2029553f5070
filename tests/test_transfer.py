"""What `init_from` keeps (the classifier only from the same dataset, unless
init_head) and training without random flips (data.random_flip=false)."""

import jax
import numpy as np
import pytest

from configs import default
from mobilenet_jax import checkpoint
from mobilenet_jax import data
from mobilenet_jax import models
from mobilenet_jax import pretrained
from mobilenet_jax import state as state_lib
from mobilenet_jax import train

from conftest import TINY_DATASET

HEAD = frozenset({'params.classifier.kernel', 'params.classifier.bias'})


def _variables(alpha=0.25, num_classes=4):
  model = models.create_model('mobilenet_v1', alpha=alpha,
                              num_classes=num_classes)
  return jax.jit(state_lib.init_variables, static_argnums=(0, 2))(
      model, jax.random.PRNGKey(0), 32)


def _abstract(**kwargs):
  return jax.eval_shape(lambda: _variables(**kwargs))


@pytest.fixture(scope='module')
def source_workdir(tmp_path_factory):
  """A workdir-like source: config.json (shapes/tiny, 4 classes) and one
  checkpoint of {'params', 'batch_stats'}."""
  workdir = tmp_path_factory.mktemp('source')
  config = default.get_config()
  config.model.alpha = 0.25
  config.data.dataset = TINY_DATASET
  checkpoint.save_config(config, str(workdir))
  manager = checkpoint.create_manager(str(workdir))
  checkpoint.save(manager, 1, _variables())
  checkpoint.close(manager)
  return str(workdir)


def test_the_classifier_is_kept_only_from_the_same_dataset(source_workdir):
  abstract = _abstract()
  # The same dataset (another config of it): everything kept.
  assert pretrained.plan_transfer(source_workdir, abstract, 'shapes') == set()
  # Another dataset with as many classes: a fresh classifier ...
  assert pretrained.plan_transfer(source_workdir, abstract, 'mnist') == HEAD
  assert pretrained.plan_transfer(source_workdir, abstract,
                                  'folder:/data/shapes') == HEAD
  # ... unless init_head.
  assert pretrained.plan_transfer(source_workdir, abstract, 'mnist',
                                  init_head=True) == set()
  # Another number of classes: a fresh classifier, which init_head refuses.
  ten = _abstract(num_classes=10)
  assert pretrained.plan_transfer(source_workdir, ten, 'shapes') == HEAD
  with pytest.raises(ValueError, match='init_head=true keeps the classifier'):
    pretrained.plan_transfer(source_workdir, ten, 'shapes', init_head=True)
  # Another width: one line naming the shapes.
  with pytest.raises(ValueError, match='does not fit this model') as e:
    pretrained.plan_transfer(source_workdir, _abstract(alpha=0.5), 'shapes')
  assert '\n' not in str(e.value) and 'saved,' in str(e.value)


def test_converted_models_count_as_imagenet(tmp_path):
  pretrained.save_converted(str(tmp_path / 'keras'), _variables(),
                            name='mobilenet_v1', alpha=0.25, num_classes=4,
                            source='test')
  source = str(tmp_path / 'keras')
  assert pretrained.plan_transfer(source, _abstract(), 'imagenet2012') == set()
  assert pretrained.plan_transfer(source, _abstract(), 'shapes') == HEAD


def test_transfer_takes_the_fresh_classifier_only_where_named(caplog):
  old, new = _variables(), jax.tree.map(lambda x: x + 1, _variables())
  with caplog.at_level('INFO'):
    merged = train._transfer(old, new, HEAD)  # pylint: disable=protected-access
  assert not any('every variable loaded' in r.getMessage()
                 for r in caplog.records)
  np.testing.assert_array_equal(merged['params']['classifier']['kernel'],
                                new['params']['classifier']['kernel'])
  np.testing.assert_array_equal(merged['params']['stem']['conv']['kernel'],
                                old['params']['stem']['conv']['kernel'])
  with caplog.at_level('INFO'):
    kept = train._transfer(old, new)  # pylint: disable=protected-access
  # A kept classifier is said too, not only a new one.
  assert any(r.getMessage().startswith('init_from: every variable loaded, the '
                                       'classifier included')
             for r in caplog.records)
  np.testing.assert_array_equal(kept['params']['classifier']['kernel'],
                                old['params']['classifier']['kernel'])


def test_random_flip_can_be_switched_off(data_dir):
  def images(flip):
    config = default.get_config().data
    config.dataset, config.data_dir = TINY_DATASET, data_dir
    config.random_flip = flip
    batch = next(data.create_train_iterator(
        config, global_batch_size=32, resolution=32, seed=0))
    return np.asarray(batch['image'])
  plain, flipped = images(False), images(True)
  # The same crops; with flips on, some of them mirrored.
  mirrored = [not np.array_equal(a, b) for a, b in zip(plain, flipped)]
  assert any(mirrored) and not all(mirrored)
  for a, b, m in zip(plain, flipped, mirrored):
    if m:
      np.testing.assert_array_equal(a[:, ::-1], b)
