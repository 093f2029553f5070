"""Where a step's time goes: the XLA ops of a `jax.profiler` trace, summed by
the model layer each comes from.

Every op XLA runs (a fusion, a dot, a copy) is named after its HLO
instruction, and the instruction's `op_name` metadata is JAX's name stack,
e.g. 'jit(train_step)/transpose(jvp(MobileNet))/block_2/expand/bn/reduce_sum':
the layer ('expand/bn' of block 2) and the pass ('transpose(' marks the
backward pass). `layer_times` joins the trace's op events to the compiled
step's HLO text by that name and sums their durations per (pass, layer
kind), the block index dropped so that, say, every expansion BatchNorm adds
up to one row. The durations are per op, summed over the threads that ran
them, so on a multi-core CPU the rows can add up to more than the step.
"""

import collections
import gzip
import json
import re

from etils import epath

from mobilenet_jax import config_check
from mobilenet_jax import models

_INSTRUCTION = re.compile(r'%([\w.\-]+) = [^\n]*?op_name="([^"]+)"')
# What follows the model in a name stack: 'MobileNet/' (jit of apply) or
# 'jvp(MobileNet))/' (under grad).
_IN_MODEL = re.compile(models.MobileNet.__name__ + r'\)*/(.*)')
# A block, or a call of one of its methods (Flax's 'block_3.residual').
_BLOCK = re.compile(r'block_\d+(\.\w+)?$')
OUTSIDE_MODEL = ('(outside the model: input normalisation, loss, optimizer, '
                 'EMA)')


def layer_of(op_name: str) -> tuple[str, str]:
  """('backward', 'expand/bn') for '.../transpose(jvp(MobileNet))/block_2/
  expand/bn/reduce_sum': the pass, then up to two module names after the
  model's (the block index and the primitive dropped; a primitive of the
  block itself, such as the residual 'add', stands for itself), or
  OUTSIDE_MODEL."""
  pass_ = 'backward' if 'transpose(' in op_name else 'forward'
  match = _IN_MODEL.search(op_name)
  if not match:
    return pass_, OUTSIDE_MODEL
  names = match.group(1).split('/')
  while len(names) > 1 and _BLOCK.match(names[0]):
    names = names[1:]
  return pass_, '/'.join(names[:-1][:2] or names)


def _trace_events(trace_dir: str) -> list[dict]:
  """The complete events of the newest trace under `trace_dir` (jax.profiler
  writes one per run to plugins/profile/<timestamp>/)."""
  paths = sorted(
      epath.Path(trace_dir).glob('plugins/profile/*/*.trace.json.gz'))
  if not paths:
    raise config_check.ConfigError(f'no jax.profiler trace under {trace_dir}')
  with gzip.open(paths[-1].open('rb')) as f:
    trace = json.load(f)
  return [e for e in trace['traceEvents'] if e.get('ph') == 'X']


def layer_times(trace_dir: str, hlo_text: str, num_steps: int) -> list[dict]:
  """[{'pass', 'layer', 'ms_per_step'}] of the traced steps, slowest first;
  ops XLA ran outside the compiled step's HLO are left out."""
  op_names = dict(_INSTRUCTION.findall(hlo_text))
  totals = collections.Counter()
  for event in _trace_events(trace_dir):
    if event['name'] in op_names:
      totals[layer_of(op_names[event['name']])] += event['dur']
  return [{'pass': pass_, 'layer': layer,
           'ms_per_step': microseconds / 1e3 / num_steps}
          for (pass_, layer), microseconds in totals.most_common()]
