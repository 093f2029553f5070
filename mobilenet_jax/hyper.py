"""Sweeps as data: lists of config overrides (big_vision's `get_hyper(h)` idea).

A sweep is a list of runs; a run is a dict {config field path: value}, e.g.
{'model.alpha': 0.5, 'data.rho': 0.857}. A sweep file (configs/sweeps/*.py)
defines `get_sweep(h)`, where `h` is this module:

  def get_sweep(h):
    return h.product([
        h.fixed('model.name', 'mobilenet_v1'),
        h.sweep('model.alpha', [1.0, 0.75, 0.5, 0.25]),
        h.sweep('data.rho', [1.0, 0.857, 0.714, 0.571]),
    ])

`product` varies its last factor fastest (as itertools.product); `zipit`
pairs factors element by element.
"""

import itertools
import re
from typing import Any, Sequence

from mobilenet_jax import config_check

Run = dict[str, Any]

_KEY = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*')
_VALUE_TYPES = (bool, int, float, str)


def _check_key(key: str) -> None:
  if not (isinstance(key, str) and _KEY.fullmatch(key)):
    raise config_check.ConfigError(
        f'sweep key must be a dotted config field path such as '
        f"'model.alpha', got {key!r}")


def _check_value(key: str, value: Any) -> None:
  if not isinstance(value, _VALUE_TYPES):
    raise config_check.ConfigError(
        f'sweep value of {key} must be a bool, int, float or '
        f'str, got {value!r}')


def sweep(key: str, values: Sequence[Any]) -> list[Run]:
  """One run per value of config field `key`."""
  _check_key(key)
  if isinstance(values, (str, bytes)) or not values:
    raise config_check.ConfigError(
        f'sweep values of {key} must be a non-empty list, got '
        f'{values!r}')
  for value in values:
    _check_value(key, value)
  return [{key: value} for value in values]


def fixed(key: str, value: Any) -> list[Run]:
  """A one-run sweep: `key` set to `value` in every run of a product."""
  _check_key(key)
  _check_value(key, value)
  return [{key: value}]


def _merge(runs: Sequence[Run]) -> Run:
  merged = {}
  for run in runs:
    for key in run:
      if key in merged:
        raise config_check.ConfigError(
            f'sweep key {key} is set by two factors of one '
            'product or zip')
    merged.update(run)
  return merged


def product(sweeps: Sequence[list[Run]]) -> list[Run]:
  """Every combination of one run from each sweep; the last varies fastest."""
  return [_merge(runs) for runs in itertools.product(*sweeps)]


def zipit(sweeps: Sequence[list[Run]]) -> list[Run]:
  """Runs merged element by element; the sweeps must have equal lengths."""
  lengths = sorted({len(runs) for runs in sweeps})
  if len(lengths) > 1:
    raise config_check.ConfigError(
        f'zipit needs sweeps of equal length, got lengths '
        f'{[len(runs) for runs in sweeps]}')
  return [_merge(runs) for runs in zip(*sweeps)]
