"""Typed `key=value` arguments for `get_config(arg)` (big_vision style):

  --config=configs/imagenet_mobilenet_v2.py:alpha=0.75,rho=0.857
"""

import difflib

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a=1,b=x' into a ConfigDict typed like `defaults`; a malformed
  item, an unknown key (with the allowed ones and the closest) or a value
  of the wrong type is a one-line ValueError."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'config argument {item!r} must be key=value')
    if key not in defaults:
      close = difflib.get_close_matches(key, defaults, n=1)
      hint = f'did you mean {close[0]!r}? ' if close else ''
      raise ValueError(f'no config argument {key!r}; {hint}allowed: '
                       f'{", ".join(sorted(defaults))}')
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in ('true', 'false'):
        raise ValueError(f'config argument {key} must be true or false, got '
                         f'{value!r}')
      result[key] = value.lower() == 'true'
    elif default is None:
      result[key] = value
    else:
      try:
        result[key] = type(default)(value)
      except ValueError:
        raise ValueError(f'config argument {key} must be a '
                         f'{type(default).__name__}, got {value!r}') from None
  return result
