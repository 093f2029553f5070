"""Deterministic stand-in weights for a timm state dict, from a seed and the
tensors' names and shapes (numpy only).

`tests/fixtures/make_timm_fixtures.py` loads them into timm to record timm's
logits; `tests/test_convert_timm.py` makes the same arrays again, converts
them and compares. Scaled so that activations keep their size through the
depth: kernels He-normal over their fan-in, BatchNorm scales near 1 and
variances in [0.5, 1.5], biases and means small, layer scales near 0.1 (near
1, the residual stream of the hybrids' 30-odd blocks grows to ~1e9, where the
attention's softmax is a hard argmax that a 1e-7 change of its input flips).
"""

import numpy as np


def tensor(seed: int, index: int, name: str, shape, dtype: str) -> np.ndarray:
  """The stand-in for state-dict tensor number `index` (`name`, `shape`)."""
  rng = np.random.default_rng([seed, index])
  shape = tuple(shape)
  if dtype == 'int64':  # BatchNorm's num_batches_tracked
    return np.zeros(shape, np.int64)
  if name.endswith('running_var'):
    value = rng.uniform(0.5, 1.5, shape)
  elif name.endswith(('running_mean', 'bias')):
    value = 0.1 * rng.standard_normal(shape)
  elif name.endswith('layer_scale.gamma'):
    value = 0.1 + 0.01 * rng.standard_normal(shape)
  elif len(shape) == 1:  # BatchNorm scale
    value = 1.0 + 0.1 * rng.standard_normal(shape)
  else:  # conv (O, I, kh, kw) or linear (O, I)
    value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
  return value.astype(np.float32)


def state_dict(seed: int, tensors) -> dict:
  """{name: array} for [(name, shape, dtype)] in state-dict order."""
  return {name: tensor(seed, i, name, shape, dtype)
          for i, (name, shape, dtype) in enumerate(tensors)}


def images(seed: int, resolution: int) -> np.ndarray:
  """A seeded input batch of one image, NCHW float32 (timm's layout)."""
  rng = np.random.default_rng([seed, resolution])
  return rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32)
