"""`shapes`: a procedural, offline image-classification dataset (tfds builder).

Each image is one filled shape drawn with numpy on a noisy background. The
class is the shape; everything else is random per example: position, size
(the shape's extent is 30-80% of the image side), a small rotation (up to
15 degrees, small enough that square/diamond and cross/x stay apart), the
shape colour, a different background colour, and Gaussian pixel noise.
Shapes are rasterised on a coordinate grid with 2x2 supersampling, so edges
are anti-aliased. Every class is symmetric under a horizontal flip, so the
flip augmentation never changes a label.

Examples are a pure function of (config seed, split, example index), so the
prepared dataset is identical on every machine. Nothing is downloaded:
`download_and_prepare` only renders and writes PNG-encoded TFRecords.

Configs (`tfds.builder('shapes/<config>')`, or `data.dataset='shapes/tiny'`):
  default: 64x64 images, 10,000 train / 2,000 test (about 30 s to prepare on
    two CPU cores).
  tiny: 32x32 images, 200 train / 75 test (tests and smoke runs).
"""

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring',
               'horizontal_bar', 'vertical_bar', 'diamond', 'x')

SIZE_RANGE = (0.3, 0.8)  # shape extent / image side
MAX_ROTATION_DEGREES = 15.0
MIN_COLOUR_DISTANCE = 120.0  # RGB distance between shape and background
MAX_NOISE_STD = 16.0
SUPERSAMPLING = 2

_SPLIT_IDS = {'train': 0, 'test': 1}
_ARM = 0.3  # half-width of the cross / x arms and half-height of the bars
_RING_INNER = 0.55
_SQUARE_HALF = 0.85
_STAR_INNER = 0.42  # inner-vertex radius of the five-pointed star


def shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of class `label` in shape coordinates.

  (u, v) are image coordinates (v pointing down) relative to the shape's
  centre and divided by its half-extent: the shape fits in [-1, 1]^2.
  """
  name = CLASS_NAMES[label]
  au, av = np.abs(u), np.abs(v)
  if name == 'circle':
    return u**2 + v**2 <= 1
  if name == 'square':
    return np.maximum(au, av) <= _SQUARE_HALF
  if name == 'triangle':  # apex (0, -1), base from (-1, 0.75) to (1, 0.75)
    return (v <= 0.75) & (au <= (v + 1) / 1.75)
  if name == 'star':
    # Fold every point into the sector between a tip (angle 0 from 'up',
    # radius 1) and the next inner vertex (angle pi/5, radius _STAR_INNER);
    # inside iff on the centre's side of the edge that joins them.
    sector = np.pi / 5
    angle = np.abs((np.arctan2(u, -v) + sector) % (2 * sector) - sector)
    radius = np.hypot(u, v)
    px, py = radius * np.cos(angle), radius * np.sin(angle)
    bx, by = _STAR_INNER * np.cos(sector), _STAR_INNER * np.sin(sector)
    return (bx - 1) * py - by * (px - 1) >= 0
  if name == 'cross':
    return ((au <= _ARM) | (av <= _ARM)) & (np.maximum(au, av) <= 1)
  if name == 'ring':
    return (u**2 + v**2 <= 1) & (u**2 + v**2 >= _RING_INNER**2)
  if name == 'horizontal_bar':
    return (au <= 1) & (av <= _ARM)
  if name == 'vertical_bar':
    return (au <= _ARM) & (av <= 1)
  if name == 'diamond':
    return au + av <= 1
  # 'x': bands along both diagonals, i.e. the cross turned by 45 degrees.
  diagonal_distances = np.abs(u + v) / np.sqrt(2), np.abs(u - v) / np.sqrt(2)
  return ((diagonal_distances[0] <= _ARM) | (diagonal_distances[1] <= _ARM)) & (
      np.maximum(au, av) <= 1)


@functools.cache
def _subpixel_grid(image_size: int):
  """(y, x) of the sub-pixel centres, SUPERSAMPLING^2 of them per pixel."""
  n = image_size * SUPERSAMPLING
  grid = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLING
  return grid.astype(np.float32)


def render(label: int, rng: np.random.Generator, image_size: int) -> np.ndarray:
  """Draws one example of class `label`: uint8 [image_size, image_size, 3]."""
  half = rng.uniform(*SIZE_RANGE) * image_size / 2
  cx, cy = rng.uniform(half, image_size - half, size=2)
  angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
  background = rng.uniform(0, 255, size=3)
  colour = rng.uniform(0, 255, size=3)
  while np.linalg.norm(colour - background) < MIN_COLOUR_DISTANCE:
    colour = rng.uniform(0, 255, size=3)
  noise_std = rng.uniform(0, MAX_NOISE_STD)

  y, x = _subpixel_grid(image_size)
  dx, dy = x - np.float32(cx), y - np.float32(cy)
  # Rotating the coordinates by -angle rotates the shape by +angle.
  cos, sin = np.float32(np.cos(angle) / half), np.float32(np.sin(angle) / half)
  u, v = cos * dx + sin * dy, cos * dy - sin * dx
  coverage = shape_mask(label, u, v).reshape(
      image_size, SUPERSAMPLING, image_size, SUPERSAMPLING).mean(axis=(1, 3))

  coverage = coverage[..., None]
  image = coverage * colour + (1 - coverage) * background
  image += noise_std * rng.standard_normal(image.shape, dtype=np.float32)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def example(seed: int, split: str, index: int, image_size: int):
  """The example `index` of `split`: (uint8 image, label); labels cycle."""
  label = index % len(CLASS_NAMES)
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  return render(label, rng, image_size), label


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Image side, split sizes and generation seed of one `shapes` variant."""
  image_size: int = 64
  num_train: int = 10_000
  num_test: int = 2_000
  seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes: 10 classes, rendered offline (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='64x64, 10k train / 2k test.'),
      ShapesConfig(name='tiny', image_size=32, num_train=200, num_test=75,
                   description='32x32, 200 train / 75 test, for tests.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3),
                                         encoding_format='png'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        'train': self._generate_examples('train', config.num_train),
        'test': self._generate_examples('test', config.num_test),
    }

  def _generate_examples(self, split, num_examples):
    config = self.builder_config
    for index in range(num_examples):
      image, label = example(config.seed, split, index, config.image_size)
      yield index, {'image': image, 'label': label}
