"""tf.data input pipelines over tensorflow-datasets, one slice per process.

Data config fields (`config.data`):
  dataset          a tfds name ('shapes', 'shapes/tiny', 'cifar10',
                   'imagenet2012', 'imagenette', 'oxford_flowers102', ...) or
                   'folder:/path' for a folder of class subfolders per split
                   (tfds ImageFolder: /path/<split>/<class>/<image>).
  data_dir         tfds data dir (local or gs://); None: tfds' default.
  rho, base_resolution  the caller's resolution = round(rho * base).
  train_split, eval_split  tfds split names (slicing allowed: 'train[:90%]').
  crop_area_range  Inception crop's area range (default (0.08, 1.0)).
  eval_crop_fraction  center-crop fraction before resizing (default 0.875).
  shuffle_buffer   train shuffle buffer (default 16384; a whole small split).
  cache            cache the decoded split in memory (default: when it has
                   at most 100k examples).

Determinism and resume: the train stream is epochs of one process's slice,
each shuffled with a seed derived from (seed, epoch); every example's
augmentation is a stateless function of (seed, process, stream position).
`start_step=k` skips to the position k batches in, so a resumed run reads
exactly what an uninterrupted one would have.
"""

import dataclasses
import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data import shapes  # registers the `shapes` builder

tf.config.set_visible_devices([], 'GPU')  # TF only feeds; JAX owns devices.

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_CACHE_LIMIT = 100_000
del shapes


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_examples: dict  # split name -> examples (whole split, all processes)


def _builder(data_config):
  name = data_config.dataset
  if name.startswith('folder:'):
    return tfds.ImageFolder(name[len('folder:'):])
  try:
    builder = tfds.builder(name, data_dir=data_config.get('data_dir'))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'data.dataset {name!r} is not a tfds dataset (nor '
                     "'folder:/path')") from e
  builder.download_and_prepare()
  return builder


def _as_dataset(builder, split, field, **kwargs):
  try:
    return builder.as_dataset(split=split, **kwargs)
  except (KeyError, ValueError) as e:
    raise ValueError(f'{field} {split!r} is not a split of this dataset; '
                     f'splits: {sorted(builder.info.splits)}') from e


def _count(builder, split, field) -> int:
  try:
    return builder.info.splits[split].num_examples
  except KeyError:  # No split metadata (e.g. tfds.testing.mock_data).
    cardinality = int(_as_dataset(builder, split, field).cardinality())
    if cardinality < 0:
      raise ValueError(f'cannot count the examples of {field} {split!r}')
    return cardinality


def get_dataset_info(data_config) -> DatasetInfo:
  builder = _builder(data_config)
  splits = {'train_split': data_config.train_split,
            'eval_split': data_config.eval_split}
  return DatasetInfo(
      num_classes=builder.info.features['label'].num_classes,
      num_examples={split: _count(builder, split, f'data.{field}')
                    for field, split in splits.items()})


def _process(process_index, process_count):
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _local_batch(global_batch_size, process_count):
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size must be a positive multiple of the '
                     f'process count ({process_count}), got '
                     f'{global_batch_size}')
  return global_batch_size // process_count


def _is_jpeg(builder) -> bool:
  image = builder.info.features['image']
  return getattr(image, 'encoding_format', None) in (None, 'jpeg')


def _decode(image_bytes):
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _normalise(image, resolution, method='bicubic'):
  image = tf.image.resize(image, [resolution, resolution], method=method)
  image = (image - MEAN_RGB) / STDDEV_RGB
  return tf.cast(image, tf.float32)


def _train_image(image_bytes, seed, resolution, area_range, jpeg):
  """Inception-style random-resized crop + flip (stateless in `seed`)."""
  shape = (tf.image.extract_jpeg_shape(image_bytes) if jpeg
           else tf.shape(_decode(image_bytes)))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([1, 1, 4]), seed=seed, area_range=area_range,
      aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  if jpeg:
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  else:
    image = tf.slice(_decode(image_bytes), begin, size)
  image = tf.image.stateless_random_flip_left_right(
      image, seed=tf.random.experimental.stateless_fold_in(seed, 1))
  return _normalise(image, resolution)


def _eval_image(image_bytes, resolution, crop_fraction):
  """Center crop of `crop_fraction` of the shorter side, resized."""
  image = _decode(image_bytes)
  shape = tf.shape(image)
  side = tf.cast(
      crop_fraction * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32),
      tf.int32)
  top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
  image = tf.image.crop_to_bounding_box(image, top, left, side, side)
  return _normalise(image, resolution)


def _encoded_split(builder, split, field):
  """(image bytes, label) pairs, images left encoded."""
  ds = _as_dataset(builder, split, field,
                   decoders={'image': tfds.decode.SkipDecoding()})
  return ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)))


def create_train_iterator(data_config, *, global_batch_size: int,
                          resolution: int, seed: int, start_step: int = 0,
                          process_index: int | None = None,
                          process_count: int | None = None
                          ) -> Iterator[dict]:
  """Endless host-local train batches {'image': [B, R, R, 3] float32,
  'label': [B] int32}, B = global_batch_size / process count."""
  index, count = _process(process_index, process_count)
  batch = _local_batch(global_batch_size, count)
  builder = _builder(data_config)
  split = tfds.split_for_jax_process(data_config.train_split,
                                     process_index=index,
                                     process_count=count)
  epoch_size = _count(builder, split, 'data.train_split')
  base = _encoded_split(builder, split, 'data.train_split')
  if data_config.get('cache', epoch_size <= _CACHE_LIMIT):
    base = base.cache()
  buffer = min(epoch_size, data_config.get('shuffle_buffer', 16384))

  def epoch(e):
    shuffled = base.shuffle(buffer, seed=seed * 1_000_003 + e,
                            reshuffle_each_iteration=False)
    return shuffled.enumerate().map(lambda i, ex: (e * epoch_size + i, ex))

  start = start_step * batch
  ds = tf.data.Dataset.counter(start // epoch_size).flat_map(epoch)
  ds = ds.skip(start % epoch_size)
  area_range = tuple(data_config.get('crop_area_range', (0.08, 1.0)))
  jpeg = _is_jpeg(builder)

  def preprocess(position, example):
    image_bytes, label = example
    example_seed = tf.stack([tf.cast(seed * 4096 + index, tf.int64),
                             position])
    return {'image': _train_image(image_bytes, example_seed, resolution,
                                  area_range, jpeg),
            'label': label}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()


def create_eval_iterator(data_config, *, global_batch_size: int,
                         resolution: int, process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[dict]:
  """One pass over this process's slice of the eval split, in batches of
  the same static shape; {'mask': [B]} is 0 on the padding that fills the
  last batches, so every example counts exactly once. Every process yields
  the same number of batches."""
  index, count = _process(process_index, process_count)
  batch = _local_batch(global_batch_size, count)
  builder = _builder(data_config)
  slices = [tfds.split_for_jax_process(data_config.eval_split,
                                       process_index=i, process_count=count,
                                       drop_remainder=False)
            for i in range(count)]
  largest = max(_count(builder, s, 'data.eval_split') for s in slices)
  num_batches = math.ceil(largest / batch)
  crop = data_config.get('eval_crop_fraction', 0.875)
  ds = _encoded_split(builder, slices[index], 'data.eval_split').map(
      lambda image, label: {'image': _eval_image(image, resolution, crop),
                            'label': label,
                            'mask': tf.constant(1.0, tf.float32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([resolution, resolution, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * batch)
  return ds.batch(batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
