r"""Op sets on this machine's default backend: train and inference throughput
of the `reference` and `cpu` op sets (`mobilenet_jax.ops`), side by side.

  python -m experiments.op_sets [--models=mobilenet_v2,mobilenet_v3_large] \
      [--dtypes=float32,bfloat16] [--batch_size=128] [--resolution=224] \
      [--steps=20] [--warmup=3] [--json]

It is what `ops='auto'` is decided on: which set is faster on which backend.
It needs only jax, flax and optax (no TensorFlow), so that it runs on an
accelerator host with a bare JAX install. The train step is the model's
forward and backward pass in training mode (batch statistics), softmax
cross-entropy and an SGD update; the inference step is the forward pass in
eval mode. Each step's inputs are made on the device before the clock
starts; the median of `steps` timed steps (after `warmup`) is reported, with
the compile time. The two op sets' steps alternate, so that a drifting
machine slows both alike.
"""

import functools
import json
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from mobilenet_jax import models
from mobilenet_jax import ops

NUM_CLASSES = 1000
MODES = ('train', 'infer')


def _steps(model, tx):
  """(train_step, infer_step): jitted, the train step donating its state."""

  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates['batch_stats']

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch):
    params, batch_stats, opt_state = state
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  @jax.jit
  def infer_step(variables, batch):
    return model.apply(variables, batch[0], train=False)

  return train_step, infer_step


def measure(name: str, dtype: str, batch_size: int, resolution: int,
            steps: int, warmup: int) -> list[dict]:
  """Both op sets' train and inference steps for one model and dtype,
  alternating step by step; one row per (op set, mode)."""
  key = jax.random.key(0)
  images = jax.random.normal(key, (batch_size, resolution, resolution, 3))
  labels = jax.random.randint(key, (batch_size,), 0, NUM_CLASSES)
  tx = optax.sgd(0.01, momentum=0.9)
  runs = {}
  for op_set in ops.OP_SETS:
    model = models.create_model(name, dtype=dtype, ops=op_set)
    variables = jax.jit(model.init)(key, images[:1])
    train_step, infer_step = _steps(model, tx)
    # The train state is a copy of its own: the train step donates it.
    state = jax.tree.map(jnp.copy, (variables['params'],
                                    variables['batch_stats'],
                                    tx.init(variables['params'])))
    for mode, step, carry in (('train', train_step, state),
                              ('infer', infer_step, variables)):
      start = time.perf_counter()
      compiled = step.lower(carry, (images, labels)).compile()
      runs[op_set, mode] = {'compiled': compiled, 'carry': carry,
                            'compile_s': time.perf_counter() - start,
                            'times': []}
  for i in range(warmup + steps):
    for (_, mode), run in runs.items():
      start = time.perf_counter()
      out = jax.block_until_ready(run['compiled'](run['carry'],
                                                  (images, labels)))
      if mode == 'train':
        run['carry'] = out
      if i >= warmup:
        run['times'].append(time.perf_counter() - start)
  rows = []
  for (op_set, mode), run in runs.items():
    median = statistics.median(run['times'])
    rows.append({'model': name, 'dtype': dtype, 'ops': op_set, 'mode': mode,
                 'batch_size': batch_size, 'resolution': resolution,
                 'img_per_sec': batch_size / median,
                 'step_ms_median': 1000 * median,
                 'step_ms_min': 1000 * min(run['times']),
                 'compile_s': run['compile_s']})
  return rows


def format_table(rows: list[dict]) -> str:
  """A markdown table; 'cpu / reference' is the cpu set's step time over
  the reference's, per model, dtype and mode."""
  reference = {(r['model'], r['dtype'], r['mode']): r['step_ms_median']
               for r in rows if r['ops'] == 'reference'}
  lines = ['| model | dtype | mode | ops | img/s | step ms (median, min) | '
           'compile s | time / reference |', '|' + '---|' * 8]
  for r in rows:
    ratio = r['step_ms_median'] / reference[r['model'], r['dtype'], r['mode']]
    lines.append(
        f"| {r['model']} | {r['dtype']} | {r['mode']} | {r['ops']} | "
        f"{r['img_per_sec']:.0f} | {r['step_ms_median']:.1f}, "
        f"{r['step_ms_min']:.1f} | {r['compile_s']:.1f} | {ratio:.2f} |")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined only when it runs (tests import this
  module beside others that define flags of the same names)."""
  flags.DEFINE_list('models', ['mobilenet_v2', 'mobilenet_v3_large'],
                    'Registry names.')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
  flags.DEFINE_integer('batch_size', 128, 'Images per step.')
  flags.DEFINE_integer('resolution', 224, 'Input side in pixels.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per op set and mode.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
  flags.DEFINE_bool('json', False, 'Print the rows as JSON, not a table.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  rows = []
  for name in FLAGS.models:
    for dtype in FLAGS.dtypes:
      rows += measure(name, dtype, FLAGS.batch_size, FLAGS.resolution,
                      FLAGS.steps, FLAGS.warmup)
      print(f'{name} {dtype}: done', file=sys.stderr)
  device = jax.devices()[0]
  if FLAGS.json:
    print(json.dumps({'backend': jax.default_backend(),
                      'device_kind': device.device_kind,
                      'jax': jax.__version__, 'rows': rows}))
  else:
    print(f'{jax.default_backend()} ({device.device_kind}), jax '
          f'{jax.__version__}')
    print(format_table(rows))


if __name__ == '__main__':
  define_flags()
  app.run(main)
