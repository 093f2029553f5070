"""Tests of the shapes builder and the tfds/tf.data input pipeline."""

import collections
import math
import os

import jax
from jax.experimental import multihost_utils
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from mobilenet_jax import data
from mobilenet_jax.data import shapes

tfds.disable_progress_bar()

TINY = 'shapes/tiny'  # 32x32, 200 train / 75 test
SIDE = 32
# Whole-image "crops": train images are then the stored images, maybe flipped.
IDENTITY_CROP = dict(crop_area_range=(1.0, 1.0),
                     crop_aspect_ratio_range=(1.0, 1.0))
MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)


def make_config(data_dir, **overrides):
  """configs/default.py's data fields on shapes/tiny, with `overrides`."""
  config = default.get_config().data
  config.dataset = TINY
  config.data_dir = data_dir
  config.update(overrides)
  return config


def stored(data_dir, split):
  """The split as written by tfds: uint8 images [N, H, W, 3], labels [N]."""
  ds = tfds.builder(TINY, data_dir=data_dir).as_dataset(split=split,
                                                         batch_size=-1)
  ds = tfds.as_numpy(ds)
  return ds['image'], ds['label']


def flip_key(image):
  """Identifies an image up to a horizontal flip."""
  return min(image.tobytes(), image[:, ::-1].tobytes())


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def concat(batches, key):
  return np.concatenate([b[key] for b in batches])


# The builder.


def test_shapes_builder_declared_sizes_balanced_classes_varied_images(
    data_dir):
  builder = tfds.builder(TINY, data_dir=data_dir)
  config = builder.builder_config
  assert builder.info.splits['train'].num_examples == config.num_train == 200
  assert builder.info.splits['test'].num_examples == config.num_test == 75
  assert builder.info.features['label'].names == list(shapes.CLASS_NAMES)
  assert len(shapes.CLASS_NAMES) >= 10

  images, labels = stored(data_dir, 'train')
  assert images.shape == (200, SIDE, SIDE, 3) and images.dtype == np.uint8
  counts = collections.Counter(labels.tolist())
  assert sorted(counts) == list(range(10))
  assert max(counts.values()) <= 1.5 * min(counts.values())
  # All distinct, with varied colours and layouts.
  assert len({image.tobytes() for image in images}) == 200
  assert images.reshape(200, -1).std(axis=0).mean() > 40
  assert np.ptp(images.reshape(200, -1).mean(axis=1)) > 60


def test_shapes_examples_are_a_function_of_seed_split_and_index():
  image, label = shapes.example(seed=0, split='train', index=13, image_size=48)
  again, label_again = shapes.example(0, 'train', 13, 48)
  np.testing.assert_array_equal(image, again)
  assert label == label_again == 13 % len(shapes.CLASS_NAMES)
  for other in (shapes.example(1, 'train', 13, 48),
                shapes.example(0, 'test', 13, 48),
                shapes.example(0, 'train', 23, 48)):
    assert not np.array_equal(image, other[0])


# Closed-form areas of the shapes in their [-1, 1]^2 box: square of half-side
# 0.85, triangle of base 2 and height 1.75, bars and arms of half-width 0.3,
# ring of inner radius 0.55, star of 10 vertices at radii 1 and 0.42.
AREAS = {
    'circle': math.pi,
    'square': 1.7**2,
    'triangle': 2 * 1.75 / 2,
    'star': 10 * 0.5 * 1.0 * 0.42 * math.sin(math.pi / 5),
    'cross': 2 * (2 * 0.6) - 0.6**2,
    'ring': math.pi * (1 - 0.55**2),
    'horizontal_bar': 2 * 0.6,
    'vertical_bar': 2 * 0.6,
    'diamond': 2.0,
}


def test_shape_masks_have_the_closed_form_areas_and_mirror_symmetry():
  step = 3 / 1200
  v, u = np.mgrid[-1.5:1.5:step, -1.5:1.5:step] + step / 2
  for label, name in enumerate(shapes.CLASS_NAMES):
    mask = shapes.shape_mask(label, u, v)
    # Every class is its own mirror image, so flips keep labels right (up to
    # rounding on the boundary).
    assert (mask != shapes.shape_mask(label, -u, v)).sum() <= 1e-3 * mask.sum()
    assert not mask[np.maximum(abs(u), abs(v)) > 1].any(), name
    if name in AREAS:
      np.testing.assert_allclose(mask.sum() * step**2, AREAS[name],
                                 rtol=0.01, err_msg=name)


# Training batches.


def test_train_epoch_is_the_split_as_uint8_flipped_and_reshuffled(data_dir):
  config = make_config(data_dir, **IDENTITY_CROP)
  iterator = data.create_train_iterator(config, global_batch_size=8,
                                        resolution=SIDE, seed=0)
  batches = take(iterator, 50)  # two epochs of 200
  for batch in batches:
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (8, SIDE, SIDE, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32

  images, labels = stored(data_dir, 'train')
  by_key = {flip_key(image): (image, label)
            for image, label in zip(images, labels)}
  for epoch in (batches[:25], batches[25:]):
    seen = concat(epoch, 'image')
    keys = [flip_key(image) for image in seen]
    assert sorted(keys) == sorted(by_key)  # each example exactly once
    flipped = 0
    for image, label, key in zip(seen, concat(epoch, 'label'), keys):
      original, original_label = by_key[key]
      assert label == original_label
      flipped += not np.array_equal(image, original)
    assert 50 < flipped < 150
  assert not np.array_equal(concat(batches[:25], 'label'),
                            concat(batches[25:], 'label'))


def test_train_is_deterministic_given_the_seed(data_dir):
  def first_batches(seed, cache=None):
    return take(data.create_train_iterator(
        make_config(data_dir, cache=cache), global_batch_size=4,
        resolution=24, seed=seed), 3)

  first, again, other = first_batches(0), first_batches(0), first_batches(1)
  # Reading and decoding every epoch gives the cached stream.
  uncached = first_batches(0, cache=False)
  assert first[0]['image'].shape == (4, 24, 24, 3)
  for a, b in zip(first + first, again + uncached):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(concat(first, 'image'), concat(other, 'image'))


@pytest.fixture(scope='module')
def sharded_data_dir(tmp_path_factory):
  """The tiny dataset written as 8 files a split: file order is shuffled."""
  path = str(tmp_path_factory.mktemp('tfds_sharded'))
  tfds.builder(TINY, data_dir=path).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=8))
  return path


@pytest.mark.parametrize('files', ['one_file', 'eight_files'])
def test_train_order_ignores_tensorflow_global_seed(files, request):
  data_dir = request.getfixturevalue(
      'data_dir' if files == 'one_file' else 'sharded_data_dir')
  def first_batches():
    return take(data.create_train_iterator(
        make_config(data_dir), global_batch_size=4, resolution=24, seed=0), 3)

  expected = first_batches()
  try:
    for global_seed in (0, 7):
      tf.random.set_seed(global_seed)
      for a, b in zip(expected, first_batches()):
        np.testing.assert_array_equal(a['image'], b['image'])
  finally:
    tf.random.set_seed(None)


def assert_resumes(config, fresh, start_steps, **kwargs):
  """A train iterator started at each of `start_steps` yields `fresh`'s
  batches from there on (3 compared)."""
  for start_step in start_steps:
    resumed = take(data.create_train_iterator(
        config, start_step=start_step, **kwargs), 3)
    for a, b in zip(fresh[start_step:], resumed):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])


def test_train_resumes_exactly_across_epoch_boundaries(data_dir):
  config = make_config(data_dir)
  kwargs = dict(global_batch_size=6, resolution=24, seed=3)
  fresh = take(data.create_train_iterator(config, **kwargs), 72)
  # 200 examples in batches of 6: batch 33 holds examples 198..203, i.e. the
  # end of epoch 0 and the start of epoch 1; batch 68 starts in epoch 2.
  assert_resumes(config, fresh, (33, 68), **kwargs)


def test_train_file_order_is_reshuffled_every_epoch_and_resumes(
    sharded_data_dir):
  # A one-example shuffle buffer keeps the read order: what differs between
  # epochs is the order of the 8 files alone.
  config = make_config(sharded_data_dir, cache=False, shuffle_buffer=1,
                       **IDENTITY_CROP)
  kwargs = dict(global_batch_size=8, resolution=SIDE, seed=0)
  fresh = take(data.create_train_iterator(config, **kwargs), 75)
  epochs = [[flip_key(image) for image in concat(fresh[i:i + 25], 'image')]
            for i in (0, 25, 50)]  # three epochs of 200
  assert all(sorted(keys) == sorted(epochs[0]) for keys in epochs)
  assert len(set(epochs[0])) == 200
  assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
  assert_resumes(config, fresh, (25, 52), **kwargs)


def test_train_processes_read_disjoint_slices_covering_the_split(data_dir):
  config = make_config(data_dir, **IDENTITY_CROP)
  keys = []
  for process_index in (0, 1):
    iterator = data.create_train_iterator(
        config, global_batch_size=8, resolution=SIDE, seed=0,
        process_index=process_index, process_count=2)
    epoch = take(iterator, 25)  # 100 examples of 4 per batch
    assert epoch[0]['image'].shape == (4, SIDE, SIDE, 3)
    keys.append({flip_key(image) for image in concat(epoch, 'image')})
  images, _ = stored(data_dir, 'train')
  assert len(keys[0]) == len(keys[1]) == 100
  assert not keys[0] & keys[1]
  assert keys[0] | keys[1] == {flip_key(image) for image in images}


# Eval batches.


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_counts_every_example_exactly_once(data_dir, process_count):
  config = make_config(data_dir, eval_crop_fraction=1.0)
  per_process = []
  for process_index in range(process_count):
    per_process.append(list(data.create_eval_iterator(
        config, global_batch_size=8, resolution=SIDE,
        process_index=process_index, process_count=process_count)))
  # 75 examples: 10 batches of 8, or 38 + 37 examples in 10 batches of 4.
  local = 8 // process_count
  assert [len(batches) for batches in per_process] == [10] * process_count
  seen_images, seen_labels = [], []
  for batches in per_process:
    for batch in batches:
      assert batch['image'].shape == (local, SIDE, SIDE, 3)
      assert batch['image'].dtype == np.uint8
      assert batch['label'].dtype == np.int32
    mask = concat(batches, 'mask')
    count = int(mask.sum())
    np.testing.assert_array_equal(mask, np.arange(len(mask)) < count)
    seen_images.append(concat(batches, 'image')[:count])
    assert not concat(batches, 'image')[count:].any()  # zero padding
    seen_labels.append(concat(batches, 'label')[:count])
  assert sorted(len(labels) for labels in seen_labels) == sorted(
      [75] if process_count == 1 else [37, 38])

  images, labels = stored(data_dir, 'test')
  assert sorted(np.concatenate(seen_labels).tolist()) == sorted(labels.tolist())
  seen = sorted(image.tobytes() for image in np.concatenate(seen_images))
  assert seen == sorted(image.tobytes() for image in images)


def test_eval_center_crop_takes_the_middle(data_dir):
  config = make_config(data_dir, eval_crop_fraction=0.5)
  batch = next(data.create_eval_iterator(config, global_batch_size=75,
                                         resolution=16))
  images, _ = stored(data_dir, 'test')
  expected = {image[8:24, 8:24].tobytes() for image in images}
  assert batch['image'].dtype == np.uint8
  assert {image.tobytes() for image in batch['image']} == expected


def test_resizing_is_antialiased_only_with_data_antialias(tmp_path):
  # Noise at 64 px shrunk to 8 px. Plain bilinear (half-pixel centres) reads
  # output pixel (i, j) at input (8i + 3.5, 8j + 3.5): the mean of the 2x2
  # pixels there. Antialiased, it averages a wider window: smoother.
  image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  os.makedirs(tmp_path / 'val' / 'noise')
  tf.io.write_file(str(tmp_path / 'val' / 'noise' / '0.png'),
                   tf.io.encode_png(image))
  resized = {}
  for antialias in (False, True):
    config = make_config(None, dataset=f'folder:{tmp_path}', eval_split='val',
                         train_split='val', eval_crop_fraction=1.0,
                         antialias=antialias)
    resized[antialias] = next(data.create_eval_iterator(
        config, global_batch_size=1, resolution=8))['image'][0]
  centres = image.astype(np.float64).reshape(8, 8, 8, 8, 3)[:, 3:5, :, 3:5]
  np.testing.assert_allclose(resized[False], centres.mean(axis=(1, 3)),
                             atol=0.5 + 1e-6)
  assert resized[True].std() < 0.5 * resized[False].std()


# Normalisation (on the device in the steps, on the host for LiteRT).


def test_normalise_is_the_formula_on_numpy_and_in_jit():
  pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), np.uint8)
  pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
  by_hand = ((pixels / 255 - np.asarray(MEAN)) / np.asarray(STD))
  on_host = data.normalise(pixels, MEAN, STD)
  assert isinstance(on_host, np.ndarray) and on_host.dtype == np.float32
  np.testing.assert_allclose(on_host, by_hand, rtol=1e-6, atol=1e-6)
  jitted = jax.jit(lambda x: data.normalise(x, MEAN, STD))(pixels)
  assert jitted.dtype == np.float32
  np.testing.assert_allclose(jitted, on_host, rtol=1e-6, atol=1e-6)
  bf16 = jax.jit(lambda x: data.normalise(x, MEAN, STD, jax.numpy.bfloat16))(
      pixels)
  assert bf16.dtype == jax.numpy.bfloat16
  np.testing.assert_allclose(np.float32(bf16), on_host, rtol=1e-2, atol=1e-2)
  with pytest.raises(ValueError, match='data.mean and data.std'):
    data.normalise(pixels, MEAN[:2], STD)
  with pytest.raises(ValueError, match='data.mean and data.std'):
    data.normalise(pixels, MEAN, (0.5, 0.0, 0.5))


# Other sources and bad input.


def test_image_folder_dataset(tmp_path):
  rng = np.random.default_rng(0)
  written = collections.defaultdict(list)
  for split, counts in (('train', (5, 5)), ('val', (3, 2))):
    for label, (name, count) in enumerate(zip(('cat', 'dog'), counts)):
      os.makedirs(tmp_path / split / name)
      for i in range(count):
        image = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
        tf.io.write_file(str(tmp_path / split / name / f'{i}.png'),
                         tf.io.encode_png(image))
        written[split].append((image.tobytes(), label))
  config = make_config(None, dataset=f'folder:{tmp_path}', train_split='train',
                       eval_split='val', eval_crop_fraction=1.0)

  info = data.get_dataset_info(config)
  assert info.num_classes == 2
  assert info.num_examples == {'train': 10, 'val': 5}
  batch = next(data.create_train_iterator(config, global_batch_size=4,
                                          resolution=16, seed=0))
  assert batch['image'].shape == (4, 16, 16, 3)
  seen = []
  for process_index in (0, 1):
    for batch in data.create_eval_iterator(
        config, global_batch_size=4, resolution=20,
        process_index=process_index, process_count=2):
      seen += [(image.tobytes(), label) for image, label, mask in zip(
          batch['image'], batch['label'], batch['mask']) if mask]
  assert sorted(seen) == sorted(written['val'])


def write_split_metadata(builder, num_examples):
  """dataset_info.json with train/validation sizes, for mock_data to read."""
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, dataset_name=builder.name,
      filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[num_examples],
                          num_bytes=0, filename_template=template)
      for split in ('train', 'validation')]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


# imagenet2012 takes the JPEG decode-and-crop path, with split sizes from
# metadata; cifar10 (PNG) is mocked without metadata, so sizes are counted.
@pytest.mark.parametrize('name,num_classes,metadata', [
    ('imagenet2012', 1000, True), ('cifar10', 10, False)])
def test_mock_data_passes_through_the_pipeline(tmp_path, name, num_classes,
                                               metadata):
  num_examples = 6
  mock_dir = None
  if metadata:
    mock_dir = str(tmp_path)
    write_split_metadata(tfds.builder(name, data_dir=mock_dir), num_examples)
  config = make_config(mock_dir, dataset=name, eval_split='validation')
  with tfds.testing.mock_data(num_examples=num_examples, data_dir=mock_dir):
    info = data.get_dataset_info(config)
    train = take(data.create_train_iterator(
        config, global_batch_size=4, resolution=32, seed=0), 2)
    evaluation = list(data.create_eval_iterator(config, global_batch_size=4,
                                                resolution=32))
  assert info.num_classes == num_classes
  assert info.num_train_examples == num_examples
  for batch in train + evaluation:
    assert batch['image'].shape == (4, 32, 32, 3)
    assert batch['image'].dtype == np.uint8
    assert ((0 <= batch['label']) & (batch['label'] < num_classes)).all()
  assert len(evaluation) == 2
  assert concat(evaluation, 'mask').sum() == num_examples


@pytest.mark.parametrize('process_index', [0, 1])
def test_distributed_processes_wait_once_for_process_0_to_prepare(
    tmp_path, monkeypatch, process_index):
  # Under jax.distributed: one barrier per dataset and process, reached by
  # process 0 with the data written, by the others before they read it.
  prepared_at_barrier = []
  def barrier(name):
    builder = tfds.builder(TINY, data_dir=str(tmp_path))
    prepared_at_barrier.append((name, builder.is_prepared()))
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: process_index)
  monkeypatch.setattr(multihost_utils, 'sync_global_devices', barrier)
  config = make_config(str(tmp_path))
  for _ in range(2):
    assert data.get_dataset_info(config).num_train_examples == 200
    evaluation = data.create_eval_iterator(
        config, global_batch_size=4, resolution=SIDE, process_count=2,
        process_index=process_index)
    assert next(evaluation)['image'].shape == (2, SIDE, SIDE, 3)
  assert prepared_at_barrier == [(f'prepared {TINY}', process_index == 0)]


def test_bad_input_raises_value_errors_naming_the_field(data_dir):
  with pytest.raises(ValueError, match='data.dataset'):
    data.get_dataset_info(make_config(data_dir, dataset='no_such_dataset'))
  with pytest.raises(ValueError, match='data.dataset'):
    data.get_dataset_info(make_config(data_dir, dataset='shapes/no_such'))
  with pytest.raises(ValueError, match='data.dataset'):
    data.get_dataset_info(make_config(data_dir, dataset='folder:/no/such/dir'))
  with pytest.raises(ValueError, match='data.train_split'):
    data.create_train_iterator(make_config(data_dir, train_split='training'),
                               global_batch_size=4, resolution=32, seed=0)
  with pytest.raises(ValueError, match='data.eval_split'):
    data.create_eval_iterator(make_config(data_dir, eval_split='valid'),
                              global_batch_size=4, resolution=32)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.create_train_iterator(make_config(data_dir), global_batch_size=7,
                               resolution=32, seed=0, process_count=2,
                               process_index=0)
  with pytest.raises(ValueError, match='global_batch_size'):
    data.create_eval_iterator(make_config(data_dir), global_batch_size=6,
                              resolution=32, process_count=4, process_index=1)
  with pytest.raises(ValueError, match='data.crop_area_range'):
    data.create_train_iterator(make_config(data_dir, crop_area_range=(0.5, 2)),
                               global_batch_size=4, resolution=32, seed=0)
  missing = make_config(data_dir)
  del missing['label_key']
  with pytest.raises(ValueError, match=r'data\.label_key is not set'):
    data.get_dataset_info(missing)
