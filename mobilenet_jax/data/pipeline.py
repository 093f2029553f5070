"""tfds + tf.data input pipeline: host-local numpy batches for train and eval.

Every process reads only its own slice of a split (`tfds.split_for_jax_process`:
even sizes, the first `n % process_count` processes get one example more) and
yields numpy batches of `global_batch_size // process_count` examples; the
training loop assembles them into global arrays.

Training stream (deterministic given `seed` and the process index). Epoch e is
this process's slice shuffled with a seed derived from (seed, process, e);
epochs are concatenated and batched with `drop_remainder`, so a batch may span
two epochs. Augmentation draws stateless random numbers seeded by
(seed, process, e, example index), so the k-th batch is a pure function of k:
`start_step=k` starts at epoch `k * B // N`, skips `k * B % N` examples
(N = slice size, B = local batch) and then yields exactly what an
uninterrupted iterator yields from its k-th batch on. The file read order is
reshuffled every epoch from (seed, process, e) too (with `cache`, epoch 0's
order, which the cache holds, every epoch), and the shuffle buffer re-mixes
the examples every epoch.

Preprocessing. Train: Inception-style random crop (a random area fraction in
`crop_area_range` of the image and aspect ratio in `crop_aspect_ratio_range`,
Szegedy et al. 2015, "Going deeper with convolutions", section 6), resize to
`resolution`, random horizontal flip. Eval: central square crop of side
`eval_crop_fraction * min(height, width)` (0.875: 224 out of 256), resize.
Resizing is bilinear, antialiased only with `data.antialias` (as neither the
authors' TF pipelines nor big_vision do: it costs 60-90% more host CPU
per training image on ImageNet-sized JPEGs). Both end rounded and clipped to
uint8 pixels: batches cross to the device at a quarter of float32's bytes,
and the jitted steps normalise them there with `normalise`,
`(pixel / 255 - mean) / std`. JPEG datasets decode and crop in one op
(`tf.image.decode_and_crop_jpeg` on the undecoded bytes), so only the crop
window is decoded.

Config fields read (`config.data`, an ml_collections.ConfigDict or a dict;
every field read must be set: configs/default.py lists them with their
defaults, and a missing one is a ValueError naming it):
  dataset: a tfds name with optional config and version ('shapes',
    'shapes/tiny', 'cifar10', 'imagenet2012', 'imagenette',
    'oxford_flowers102', ...), or 'folder:/path/to/dir' for a local folder
    read by `tfds.ImageFolder`: /path/to/dir/<split>/<class>/<image file>,
    where split names are the subfolder names (plain names only, no slicing)
    and labels the sorted class folder names. tfds datasets are prepared
    (`download_and_prepare`) into `data_dir` on first use; the built-in
    `shapes` is rendered offline, the others download (imagenet2012 needs its
    manual files). Under jax.distributed, process 0 prepares it first and
    the others wait for it (a shared data_dir is written once).
  data_dir: tfds data directory; None is tfds' default (~/tensorflow_datasets).
    gs:// paths work.
  train_split, eval_split: tfds split strings, slicing allowed
    ('train', 'train[:90%]', 'validation').
  image_key, label_key: the image and ClassLabel feature names.
  rho, base_resolution: not read here; the caller computes
    `resolution = models.input_resolution(rho, base_resolution)`.
  shuffle_buffer: examples in the training shuffle buffer (capped at the
    slice size, which makes it a full shuffle).
  cache: keep the training slice in memory after the first epoch: the decoded
    images, or the encoded bytes for JPEG datasets. None decides: cache when
    the images have a fixed shape and the decoded slice fits in
    AUTO_CACHE_MAX_BYTES (shapes, cifar10: yes; imagenet2012: no).
  crop_area_range: (min, max) crop area as a fraction of the image area
    (Inception: 0.08-1.0; for `shapes` about (0.35, 1.0) keeps shapes whole).
  crop_aspect_ratio_range: (min, max) crop width / height.
  eval_crop_fraction: central crop side / shorter image side, in (0, 1].
  antialias: antialiased bilinear resizing (default False).
  mean, std: not read by the iterators; per-channel RGB statistics in
    [0, 1] units for `normalise` (ImageNet's: (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225)); Keras Applications weights expect
    mean = std = (0.5, 0.5, 0.5), i.e. inputs in [-1, 1].
"""

import dataclasses
import math
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Registers the `shapes` tfds builder.
from mobilenet_jax.data import shapes  # pylint: disable=unused-import

# TF only feeds data here; keep it off any GPU so that JAX owns the memory.
if tf.config.list_physical_devices('GPU'):
  tf.config.set_visible_devices([], 'GPU')

FOLDER_PREFIX = 'folder:'
AUTO_CACHE_MAX_BYTES = 2 * 1024**3

# The functions given to tf.data below are plain TF ops (their Python branches
# are on static settings), so AutoGraph need not rewrite them.
_plain = tf.autograph.experimental.do_not_convert


def _field(data_config, name):
  """`data_config[name]`; a ValueError naming the field if it is not set."""
  if name not in data_config:
    raise ValueError(f'data.{name} is not set (configs/default.py lists every '
                     'data field)')
  return data_config[name]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training loop needs to know about a dataset.

  `num_examples` maps the configured train and eval split strings to their
  total sizes (all processes together); `image_shape` is the stored
  (height, width, channels) when every image has it, else None.
  """
  name: str
  num_classes: int
  train_split: str
  eval_split: str
  num_examples: dict[str, int]
  image_shape: tuple[int, int, int] | None

  @property
  def num_train_examples(self) -> int:
    return self.num_examples[self.train_split]

  @property
  def num_eval_examples(self) -> int:
    return self.num_examples[self.eval_split]


@dataclasses.dataclass(frozen=True)
class _Source:
  """A dataset builder plus how to read its images."""
  builder: tfds.core.DatasetBuilder
  image_key: str
  label_key: str

  @property
  def is_folder(self) -> bool:
    return isinstance(self.builder, tfds.ImageFolder)

  @property
  def image_feature(self) -> tfds.features.Image:
    return self.builder.info.features[self.image_key]

  @property
  def is_jpeg(self) -> bool:
    return self.image_feature.encoding_format == 'jpeg'

  @property
  def image_shape(self) -> tuple[int, int, int] | None:
    shape = self.image_feature.shape
    return tuple(shape) if all(isinstance(d, int) for d in shape) else None

  def decode(self, encoded: tf.Tensor) -> tf.Tensor:
    """Encoded bytes -> uint8 [H, W, 3] (grayscale is repeated to RGB)."""
    image = self.image_feature.decode_example(encoded)
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    return image

  def num_examples(self, split: str, field: str, process_index: int = 0,
                   process_count: int = 1) -> int:
    """Examples of `split` read by one process; ValueError for bad splits."""
    splits = self.builder.info.splits
    if self.is_folder and split not in splits:
      raise ValueError(f'data.{field}: unknown split {split!r} of an image '
                       f'folder; its splits (subfolders): {sorted(splits)}')
    if not splits:
      # No split metadata, as under tfds.testing.mock_data without metadata
      # files: count what reading yields.
      count = int(self.read(split, process_index, process_count).cardinality())
      if count < 0:
        raise ValueError(f'data.{field}: cannot count the examples of split '
                         f'{split!r} (the dataset has no split metadata)')
      return count
    try:
      total = splits[split].num_examples
    except (KeyError, ValueError):
      raise ValueError(f'data.{field}: unknown split {split!r}; available: '
                       f'{sorted(splits)} (slicing allowed, e.g. '
                       f"'train[:90%]')") from None
    if total <= 0:
      raise ValueError(f'data.{field}: split {split!r} has no examples')
    if self.is_folder:
      start, end = _even_bounds(total, process_index, process_count)
      return end - start
    return splits[tfds.split_for_jax_process(
        split, process_index=process_index,
        process_count=process_count)].num_examples

  def read(self, split: str, process_index: int, process_count: int, *,
           shuffle_seed: int | None = None) -> tf.data.Dataset:
    """This process's slice as (undecoded image bytes, label) pairs.

    Files are read in an order seeded by `shuffle_seed` (None: stored
    order), the same order on every pass.
    """
    decoders = {self.image_key: tfds.decode.SkipDecoding()}
    if self.is_folder:  # ImageFolder reads no sub-splits: slice it here.
      start, end = _even_bounds(self.builder.info.splits[split].num_examples,
                                process_index, process_count)
      ds = self.builder.as_dataset(split=split, decoders=decoders)
      ds = ds.skip(start).take(end - start)
    else:
      read_config = tfds.ReadConfig(
          shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False)

      def files():
        return self.builder.as_dataset(
            split=tfds.split_for_jax_process(
                split, process_index=process_index,
                process_count=process_count),
            decoders=decoders, shuffle_files=shuffle_seed is not None,
            read_config=read_config)

      @_plain
      def shuffled_files(_):
        _clear_graph_seed()
        return files()
      # The file shuffle is made inside a tf.data function, where the graph
      # seed can be cleared; unshuffled reads keep their cardinality (which
      # flat_map forgets) for counting.
      ds = (files() if shuffle_seed is None else
            tf.data.Dataset.from_tensors(0).flat_map(shuffled_files))
    return ds.map(_plain(lambda ex: (ex[self.image_key], ex[self.label_key])))


def _clear_graph_seed() -> None:
  """Inside a tf.data function: its random ops take their op seeds alone.

  tf.data pairs an op seed with the graph's, which tf.random.set_seed(k)
  sets; that changed the order (and with k = 0 failed on a tensor op seed).
  """
  tf.compat.v1.get_default_graph().seed = None


def _even_bounds(total: int, index: int, count: int) -> tuple[int, int]:
  """[start, end) of slice `index` of `count`: tfds.even_splits' rule."""
  size, extra = divmod(total, count)
  start = index * size + min(index, extra)
  return start, start + size + (index < extra)


def _builder(dataset: str, data_dir: str | None):
  """`tfds.builder`; a one-line ValueError for a name tfds does not know."""
  try:
    return tfds.builder(dataset, data_dir=data_dir)
  except (ValueError, AssertionError) as e:
    reason = str(e).splitlines()[0][:200]
    raise ValueError(
        f'data.dataset: unknown dataset {dataset!r} ({reason}); use a tfds '
        f"name such as 'shapes', 'cifar10', 'imagenet2012', or "
        f"'folder:/path/to/dir'") from None


# (dataset, data_dir) pairs that process 0 prepared under jax.distributed
# while this process waited: later reads skip the barrier.
_PREPARED_BY_PROCESS_0: set[tuple[str, str | None]] = set()


def _prepared_builder(dataset: str, data_dir: str | None):
  """tfds' builder of `dataset`, prepared in `data_dir` if it was not.

  Under jax.distributed, process 0 prepares first while the others wait,
  once per (dataset, data_dir) and process: on a data_dir they share, they
  then find it prepared (writing it at once, all but one failed to rename
  their finished copy into place); on disks of their own, each prepares its
  copy after.
  """
  key = (dataset, data_dir)
  if jax.process_count() > 1 and key not in _PREPARED_BY_PROCESS_0:
    if jax.process_index() == 0:
      _builder(dataset, data_dir).download_and_prepare()
    multihost_utils.sync_global_devices(f'prepared {dataset}')
    _PREPARED_BY_PROCESS_0.add(key)
  builder = _builder(dataset, data_dir)  # opened after process 0 wrote it
  builder.download_and_prepare()
  return builder


def _source(data_config) -> _Source:
  """The configured dataset's builder, prepared; ValueError if unknown."""
  dataset = _field(data_config, 'dataset')
  if not isinstance(dataset, str) or not dataset:
    raise ValueError(f"data.dataset must be a tfds name or 'folder:/path', "
                     f'got {dataset!r}')
  if dataset.startswith(FOLDER_PREFIX):
    root = dataset[len(FOLDER_PREFIX):]
    if not tf.io.gfile.isdir(root):
      raise ValueError(f'data.dataset: {root!r} is not a directory (expected '
                       f"'folder:/path/to/dir' with <split>/<class>/<image>)")
    builder = tfds.ImageFolder(root)
  else:
    builder = _prepared_builder(dataset, _field(data_config, 'data_dir'))
  source = _Source(builder, _field(data_config, 'image_key'),
                   _field(data_config, 'label_key'))
  features = builder.info.features
  for field, kind in (('image_key', tfds.features.Image),
                      ('label_key', tfds.features.ClassLabel)):
    key = getattr(source, field)
    if key not in features or not isinstance(features[key], kind):
      names = [k for k in features if isinstance(features[k], kind)]
      raise ValueError(f'data.{field}: {key!r} is not a {kind.__name__} '
                       f'feature of {dataset!r}; candidates: {names}')
  return source


def _check_range(data_config, name: str, low: float, high: float) -> tuple:
  value = tuple(_field(data_config, name))
  if not (len(value) == 2 and low < value[0] <= value[1] <= high):
    raise ValueError(f'data.{name} must be (min, max) with {low} < min <= max '
                     f'<= {high}, got {value!r}')
  return value


def normalise(images, mean, std, dtype=np.float32):
  """Pixels in [0, 255] (the iterators' uint8) -> `(pixel / 255 - mean) /
  std` in `dtype`, per RGB channel (the last axis).

  The one normalisation of the codebase: the jitted train and eval steps
  call it on the device (a jax array in, a jax array out), export's int8
  calibration and LiteRT evaluation on the host (numpy in, numpy out), so
  an exported model takes exactly what the steps fed the network. `mean`
  and `std` are 3 values each in [0, 1] units (`config.data`); anything
  else is a ValueError.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != (3,) or std.shape != (3,) or not np.all(std > 0):
    raise ValueError(f'data.mean and data.std must be 3 values each, std > 0; '
                     f'got {mean.tolist()}, {std.tolist()}')
  return ((images.astype(np.float32) - 255 * mean) / (255 * std)).astype(dtype)


def _resize(image: tf.Tensor, resolution: int,
            antialias: bool) -> tf.Tensor:
  """Bilinear to `resolution`, rounded to uint8 pixels."""
  image = tf.image.resize(image, [resolution, resolution], method='bilinear',
                          antialias=antialias)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.ensure_shape(image, [resolution, resolution, 3])


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got '
                     f'{process_index}')
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if not (isinstance(global_batch_size, int) and global_batch_size > 0
          and global_batch_size % process_count == 0):
    raise ValueError(f'global_batch_size must be a positive multiple of the '
                     f'process count {process_count}, got '
                     f'{global_batch_size!r}')
  return global_batch_size // process_count


def _check_resolution(resolution: int) -> None:
  if not (isinstance(resolution, int) and resolution > 0):
    raise ValueError(f'resolution must be a positive int, got {resolution!r}')


def _finish(ds: tf.data.Dataset) -> Iterator[dict]:
  options = tf.data.Options()
  options.deterministic = True
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator()


def get_dataset_info(data_config) -> DatasetInfo:
  """Classes, split sizes and image shape; prepares the dataset if needed."""
  source = _source(data_config)
  splits = {field: _field(data_config, field)
            for field in ('train_split', 'eval_split')}
  return DatasetInfo(
      name=_field(data_config, 'dataset'),
      num_classes=source.builder.info.features[source.label_key].num_classes,
      train_split=splits['train_split'], eval_split=splits['eval_split'],
      num_examples={split: source.num_examples(split, field)
                    for field, split in splits.items()},
      image_shape=source.image_shape)


def create_train_iterator(data_config, *, global_batch_size: int,
                          resolution: int, seed: int, start_step: int = 0,
                          process_index: int | None = None,
                          process_count: int | None = None) -> Iterator[dict]:
  """Endless augmented training batches of this process's slice.

  Yields {'image': uint8 [B, resolution, resolution, 3] (pixels, not
  normalised: see `normalise`), 'label': int32 [B]} with
  B = global_batch_size // process_count; the k-th batch depends only on
  (seed, process, k), so `start_step=k` resumes exactly (see the module
  docstring). process_index / process_count default to jax's.
  """
  process_index, process_count = _process(process_index, process_count)
  batch_size = _local_batch_size(global_batch_size, process_count)
  _check_resolution(resolution)
  if not (isinstance(start_step, int) and start_step >= 0):
    raise ValueError(f'start_step must be an int >= 0, got {start_step!r}')
  area_range = _check_range(data_config, 'crop_area_range', 0, 1)
  aspect_range = _check_range(data_config, 'crop_aspect_ratio_range', 0,
                              math.inf)
  shuffle_buffer = _field(data_config, 'shuffle_buffer')
  if not (isinstance(shuffle_buffer, int) and shuffle_buffer > 0):
    raise ValueError(
        f'data.shuffle_buffer must be a positive int, got {shuffle_buffer!r}')
  antialias = data_config.get('antialias', False)
  cache = _field(data_config, 'cache')
  if cache not in (None, True, False):
    raise ValueError(f'data.cache must be None, True or False, got {cache!r}')

  source = _source(data_config)
  split = _field(data_config, 'train_split')
  num_examples = source.num_examples(split, 'train_split', process_index,
                                     process_count)
  if num_examples == 0:
    raise ValueError(f'data.train_split: {split!r} leaves process '
                     f'{process_index} of {process_count} no examples')
  if cache is None:
    cache = (source.image_shape is not None and num_examples *
             math.prod(source.image_shape) <= AUTO_CACHE_MAX_BYTES)
  decode_early = cache and not source.is_jpeg

  key = tf.constant([seed, process_index], tf.int64)

  def epoch_seeds(e):
    """(example shuffle seed, file order seed) of epoch e, and its key."""
    epoch_key = tf.random.experimental.stateless_fold_in(key, e)
    shuffle_seed, file_seed = tf.unstack(tf.random.stateless_uniform(
        [2], epoch_key, minval=None, maxval=None, dtype=tf.int64))
    return shuffle_seed, file_seed, epoch_key

  def read(file_seed):
    """(index, example) in the file order of `file_seed`."""
    examples = source.read(split, process_index, process_count,
                           shuffle_seed=file_seed).enumerate()
    if decode_early:
      examples = examples.map(
          _plain(lambda i, ex: (i, (source.decode(ex[0]), ex[1]))),
          num_parallel_calls=tf.data.AUTOTUNE)
    return examples

  if cache:  # the cache holds one file order: epoch 0's
    cached = read(epoch_seeds(0)[1]).cache()

  @_plain
  def epoch(e):
    _clear_graph_seed()
    shuffle_seed, file_seed, epoch_key = epoch_seeds(e)
    examples = cached if cache else read(file_seed)
    shuffled = examples.shuffle(min(shuffle_buffer, num_examples),
                                seed=shuffle_seed,
                                reshuffle_each_iteration=False)
    return shuffled.map(_plain(lambda i, ex: (epoch_key, i, ex)))

  @_plain
  def preprocess(epoch_key, i, example):
    image, label = example
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(epoch_key, i), 2))
    if source.is_jpeg:
      shape = tf.image.extract_jpeg_shape(image)
    else:
      image = image if decode_early else source.decode(image)
      shape = tf.shape(image)
    # The whole image is the only box, so area_range alone bounds the crop.
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([[[0, 0, 1, 1]]], tf.float32), seed=crop_seed,
        min_object_covered=0.0, aspect_ratio_range=aspect_range,
        area_range=area_range, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    if source.is_jpeg:
      image = tf.image.decode_and_crop_jpeg(
          image, tf.stack([begin[0], begin[1], size[0], size[1]]), channels=3)
    else:
      image = tf.slice(image, begin, size)
    image = _resize(image, resolution, antialias)
    if data_config.get('random_flip', True):  # off: digits, text
      image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {'image': image, 'label': tf.cast(label, tf.int32)}

  start_epoch, offset = divmod(start_step * batch_size, num_examples)
  ds = tf.data.Dataset.counter(start_epoch).flat_map(epoch).skip(offset)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return _finish(ds.batch(batch_size, drop_remainder=True))


def create_eval_iterator(data_config, *, global_batch_size: int,
                         resolution: int, process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[dict]:
  """One pass over this process's slice of the eval split.

  Yields {'image' (uint8, as the training batches), 'label',
  'mask': float32 [B]} batches of B =
  global_batch_size // process_count. The last batches are padded (zero
  image, label 0, mask 0) so that every process yields the same number of
  batches, ceil(largest slice / B), all of the same shape; every example
  appears exactly once with mask 1.
  """
  process_index, process_count = _process(process_index, process_count)
  batch_size = _local_batch_size(global_batch_size, process_count)
  _check_resolution(resolution)
  fraction = _field(data_config, 'eval_crop_fraction')
  if not 0 < fraction <= 1:
    raise ValueError(
        f'data.eval_crop_fraction must be in (0, 1], got {fraction!r}')
  antialias = data_config.get('antialias', False)

  source = _source(data_config)
  split = _field(data_config, 'eval_split')
  sizes = [source.num_examples(split, 'eval_split', p, process_count)
           for p in range(process_count)]
  num_batches = -(-max(sizes) // batch_size)

  @_plain
  def preprocess(image, label):
    if source.is_jpeg:
      shape = tf.image.extract_jpeg_shape(image)
    else:
      image = source.decode(image)
      shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.maximum(1, tf.cast(tf.round(fraction * tf.cast(
        tf.minimum(height, width), tf.float32)), tf.int32))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    if source.is_jpeg:
      image = tf.image.decode_and_crop_jpeg(
          image, tf.stack([top, left, side, side]), channels=3)
    else:
      image = image[top:top + side, left:left + side]
    return {'image': _resize(image, resolution, antialias),
            'label': tf.cast(label, tf.int32), 'mask': tf.constant(1.0)}

  ds = source.read(split, process_index, process_count).map(
      preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([resolution, resolution, 3], tf.uint8),
      'label': tf.constant(0), 'mask': tf.constant(0.0)})
  ds = ds.concatenate(
      padding.repeat(num_batches * batch_size - sizes[process_index]))
  return _finish(ds.batch(batch_size, drop_remainder=True))
