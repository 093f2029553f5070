"""Typed `key=value` arguments for `get_config(arg)` (big_vision style):

  --config=configs/imagenet_mobilenet_v2.py:alpha=0.75,rho=0.857
"""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a=1,b=x' into a ConfigDict typed like `defaults`; unknown keys
  are an error naming the allowed ones."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'config argument {item!r} must be key=value')
    if key not in defaults:
      raise ValueError(f'config argument {key!r} must be one of '
                       f'{sorted(defaults)}')
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in ('true', 'false'):
        raise ValueError(f'config argument {key} must be true or false')
      result[key] = value.lower() == 'true'
    elif default is None:
      result[key] = value
    else:
      result[key] = type(default)(value)
  return result
