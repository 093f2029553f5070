r"""Throughput benchmark: images per second of training or inference steps,
of the training input pipeline alone, or latency of an exported model.

  python -m mobilenet_jax.bench --model=mobilenet_v2 [--alpha=1.0] \
      [--resolution=224] [--batch_size=32] [--dtype=float32|bfloat16] \
      [--mode=train|infer] [--ops=auto] [--steps=10] [--warmup=2] \
      [--trace_dir=DIR] [--config=CONFIG_FILE] [--json]
  python -m mobilenet_jax.bench --data [--dataset=shapes] [--data_dir=...] \
      [--resolution=224] [--batch_size=32] [--steps=10] [--warmup=2] [--json]
  python -m mobilenet_jax.bench --tflite=PATH [--threads=1] [--steps=30] \
      [--warmup=2] [--json]

Each step runs on a fresh random batch of uint8 images (made on the device
before the clock starts; the step normalises them, as in training) and is
timed on its own up to `jax.block_until_ready`; the report gives the median
and the spread (min, quartiles, max) of the timed steps after `warmup`
untimed ones, the compile time (`jit(...).lower(...).compile()`)
and the peak memory: the device's `memory_stats()` where it has them (TPU,
GPU), else the process's maximum resident set size (CPU; it includes the
Python process itself). Run as a command, it first restarts itself with
glibc's malloc tunables and runs its steps on the calling thread
(`mobilenet_jax.host_memory`); the steps compile with
`xla_options.step_compiler_options()`. The result's `glibc_tunables`,
`cpu_async_dispatch` and `compiler_options` say what it ran with.

With `--data`, each step is one host batch from `data.create_train_iterator`
(decode, crop, flip, resize to uint8; tf.data with prefetch); `setup_s` is
the time to the first batch (preparing the dataset, filling the cache);
`cpu_ms_per_image` is the process's CPU time over the timed steps per image
(core-milliseconds: what a host of N cores divides) and `cores_busy` that
CPU time over the wall time. A folder of JPEGs (`--dataset=folder:DIR`,
DIR/train/<class>/*.jpg) times the decode-and-crop path of ImageNet.

With `--tflite`, each step is one `invoke()` of an exported model
(`mobilenet_jax.export`) on the LiteRT interpreter (XNNPACK, `threads`
threads) on one random image, the latency on a phone-like batch of 1; the
default is 30 timed steps.

`--trace_dir` also traces the timed steps with `jax.profiler` and reports
their time per layer kind and pass (`mobilenet_jax.step_profile`).

Train mode times `train.train_step` (forward, backward, optimizer update,
BatchNorm statistics and EMA) with the optimizer of `--config` (a config
file; default the ImageNet recipe `configs/imagenet_mobilenet_v2.py`: TF
RMSProp, EMA 0.9999); infer mode times `model.apply(..., train=False)`.
Both normalise with the config's data mean and std, and `--data` reads with
its data settings.
"""

if __name__ == '__main__':
  # First, before the heavy imports: this may re-execute the process.
  from mobilenet_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_step_buffers_mapped()
  from mobilenet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()

import contextlib
import functools
import json
import os
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from mobilenet_jax import cli
from mobilenet_jax import config_check
from mobilenet_jax import config_files
from mobilenet_jax import data
from mobilenet_jax import host_memory
from mobilenet_jax import litert
from mobilenet_jax import models
from mobilenet_jax import ops as ops_lib
from mobilenet_jax import optim
from mobilenet_jax import state as state_lib
from mobilenet_jax import step_profile
from mobilenet_jax import train
from mobilenet_jax import xla_options

MODES = ('train', 'infer')
DTYPES = ('float32', 'bfloat16')
NUM_CLASSES = 1000


def peak_memory_mb() -> tuple[float, str]:
  """(peak MB, source): device `peak_bytes_in_use` if the backend reports
  it, else the process's maximum resident set size (Linux: kilobytes)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 'max_rss'


def summarize(step_seconds, batch_size: int) -> dict:
  """Median, quartiles and extremes of per-step times; images per second
  at the median."""
  ms = np.asarray(step_seconds) * 1e3
  median = float(np.median(ms))
  return {
      'img_per_sec': batch_size / median * 1e3,
      'step_ms_median': median,
      'step_ms_min': float(ms.min()),
      'step_ms_p25': float(np.percentile(ms, 25)),
      'step_ms_p75': float(np.percentile(ms, 75)),
      'step_ms_max': float(ms.max()),
  }


def _check(name, value, allowed):
  if value not in allowed:
    raise config_check.ConfigError(
        f'{name} must be one of {list(allowed)}, got {value!r}')


def _check_counts(steps: int, warmup: int, batch_size: int):
  if steps < 5:
    raise config_check.ConfigError(
        f'steps must be >= 5 for a median and spread, got {steps}')
  if warmup < 0:
    raise config_check.ConfigError(f'warmup must be >= 0, got {warmup}')
  if batch_size <= 0:
    raise config_check.ConfigError(f'batch_size must be > 0, got {batch_size}')


def _init_variables(model, resolution: int, rng):
  return jax.jit(
      lambda rng: state_lib.init_variables(model, rng, resolution))(rng)


def _train_step_fn(model, resolution: int, rng,
                   config: ml_collections.ConfigDict):
  """(jitted step(state, batch) -> (state, metrics), initial state) with
  `config`'s optimizer and normalisation."""
  optim_config = config.optim
  use_ema = optim_config.ema_decay > 0
  variables = _init_variables(model, resolution, rng)
  tx, schedule = optim.create_optimizer(
      optim_config, num_train_steps=10**6, params=variables['params'],
      steps_per_epoch=1000, batch_size=config.batch_size)
  # Built under jit, so that the EMA copies are buffers of their own: the
  # step donates the state.
  state = jax.jit(lambda v: state_lib.create_train_state(
      model, tx, rng, resolution, use_ema, variables=v))(variables)
  step = functools.partial(
      train.train_step, model=model, tx=tx, schedule=schedule,
      num_classes=NUM_CLASSES, label_smoothing=optim_config.label_smoothing,
      ema_decay=optim_config.ema_decay, frozen_backbone=False,
      mean=tuple(config.data.mean), std=tuple(config.data.std))
  return jax.jit(step, donate_argnums=0,
                 compiler_options=xla_options.step_compiler_options()), state


def _infer_step_fn(model, resolution: int, rng,
                   config: ml_collections.ConfigDict):
  """(jitted step(variables, batch) -> (variables, logits), variables) with
  `config`'s normalisation."""
  variables = _init_variables(model, resolution, rng)
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def step(variables, batch):
    images = data.normalise(batch['image'], mean, std, model.dtype)
    return variables, model.apply(variables, images, train=False)

  return jax.jit(
      step, compiler_options=xla_options.step_compiler_options()), variables


def benchmark_model(name: str, *, config: ml_collections.ConfigDict,
                    alpha: float = 1.0, resolution: int = 224,
                    batch_size: int = 32, dtype: str = 'float32',
                    mode: str = 'train', ops: str = 'auto',
                    steps: int = 10, warmup: int = 2, seed: int = 0,
                    trace_dir: str | None = None) -> dict:
  """Times `steps` train or inference steps of one model (the optimizer and
  normalisation of `config`, a training config); returns the settings and `summarize`'s figures plus `compile_s` and `peak_mem_mb`.

  With `trace_dir`, the timed steps run under `jax.profiler` (a trace for
  TensorBoard or Perfetto there) and the result gains `layer_ms`: their time
  per layer kind and pass (`step_profile.layer_times`).
  """
  _check('mode', mode, MODES)
  _check('dtype', dtype, DTYPES)
  _check_counts(steps, warmup, batch_size)
  model = models.create_model(name, num_classes=NUM_CLASSES, alpha=alpha,
                              dtype=dtype, ops=ops)
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(seed))
  make_step = _train_step_fn if mode == 'train' else _infer_step_fn
  step, carry = make_step(model, resolution, init_rng, config)

  @jax.jit
  def random_batch(key):
    image_key, label_key = jax.random.split(key)
    return {
        'image': jax.random.randint(
            image_key, (batch_size, resolution, resolution, 3), 0, 256,
            jnp.int32).astype(jnp.uint8),
        'label': jax.random.randint(label_key, (batch_size,), 0, NUM_CLASSES),
    }

  batches = (random_batch(k) for k in jax.random.split(data_rng,
                                                       warmup + steps))
  batch = jax.block_until_ready(next(batches))
  start = time.perf_counter()
  compiled = step.lower(carry, batch).compile()
  compile_s = time.perf_counter() - start

  times = []
  for i in range(warmup + steps):
    if i:
      batch = jax.block_until_ready(next(batches))
    if i == warmup and trace_dir:
      jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    carry, out = jax.block_until_ready(compiled(carry, batch))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  del out
  profile = {}
  if trace_dir:
    jax.profiler.stop_trace()
    profile['layer_ms'] = step_profile.layer_times(
        trace_dir, compiled.as_text(), steps)
  peak_mb, peak_source = peak_memory_mb()
  return {
      'model': name, 'alpha': alpha, 'resolution': resolution,
      'batch_size': batch_size, 'dtype': dtype, 'mode': mode,
      'ops': ops, 'ops_resolved': model.ops,
      'steps': steps, 'warmup': warmup,
      'backend': jax.default_backend(),
      'device_kind': jax.local_devices()[0].device_kind,
      'glibc_tunables': os.environ.get(host_memory.TUNABLES, ''),
      'cpu_async_dispatch': jax.config.values[
          'jax_cpu_enable_async_dispatch'],
      'compiler_options': xla_options.step_compiler_options(),
      **summarize(times, batch_size),
      'compile_s': compile_s,
      'peak_mem_mb': peak_mb, 'peak_mem_source': peak_source,
      **profile,
  }


def benchmark_data(dataset: str = 'shapes', *,
                   config: ml_collections.ConfigDict,
                   data_dir: str | None = None,
                   split: str = 'train', resolution: int = 224,
                   batch_size: int = 32, steps: int = 10, warmup: int = 2,
                   seed: int = 0, antialias: bool = False) -> dict:
  """Times `steps` batches of the training input pipeline (after `warmup`
  more and the first one, which builds it) with `config`'s data settings
  on `dataset`, resizing with `antialias`."""
  _check_counts(steps, warmup, batch_size)
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.dataset = dataset
  data_config.data_dir = data_dir
  data_config.train_split = split
  data_config.antialias = antialias
  start = time.perf_counter()
  batches = data.create_train_iterator(
      data_config, global_batch_size=batch_size, resolution=resolution,
      seed=seed)
  next(batches)
  setup_s = time.perf_counter() - start
  times = []
  for i in range(warmup + steps):
    if i == warmup:
      cpu_start, wall_start = time.process_time(), time.perf_counter()
    start = time.perf_counter()
    next(batches)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  # The process's CPU time (every thread: tf.data's workers) over the timed
  # steps: core-milliseconds per image, and how many cores that kept busy.
  cpu_s = time.process_time() - cpu_start
  wall_s = time.perf_counter() - wall_start
  peak_mb, peak_source = peak_memory_mb()
  return {
      'dataset': dataset, 'split': split, 'resolution': resolution,
      'antialias': antialias, 'batch_size': batch_size, 'steps': steps,
      'warmup': warmup, **summarize(times, batch_size),
      'cpu_ms_per_image': 1000 * cpu_s / (steps * batch_size),
      'cores_busy': cpu_s / wall_s,
      'setup_s': setup_s,
      'peak_mem_mb': peak_mb, 'peak_mem_source': peak_source,
  }


def benchmark_tflite(tflite_path: str, *, threads: int = 1, steps: int = 30,
                     warmup: int = 2, seed: int = 0) -> dict:
  """Times `steps` single-image `invoke()`s of a .tflite model (after
  `warmup` more) on the LiteRT interpreter with `threads` threads."""
  _check_counts(steps, warmup, 1)
  if threads < 1:
    raise config_check.ConfigError(f'threads must be >= 1, got {threads}')
  interpreter = litert.load(tflite_path, threads=threads)
  (detail,) = interpreter.get_input_details()
  if detail['dtype'] == np.float32:
    image = np.random.default_rng(seed).standard_normal(detail['shape'])
  else:
    image = np.random.default_rng(seed).integers(-128, 128, detail['shape'])
  interpreter.set_tensor(detail['index'], image.astype(detail['dtype']))
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    interpreter.invoke()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return {
      'tflite': tflite_path, 'threads': threads,
      'resolution': int(detail['shape'][1]),
      'input_dtype': np.dtype(detail['dtype']).name,
      'steps': steps, 'warmup': warmup, **summarize(times, 1),
      'size_bytes': os.path.getsize(tflite_path),
  }


def _ms(value: float) -> str:
  """Three significant digits ('0.412', '4.12', '41.2', '412'), so that
  sub-millisecond times (int8 against float at small sizes) differ."""
  return f'{value:.3g}' if value < 100 else f'{value:.0f}'


def _print_timing(result):
  print(f"  {result['img_per_sec']:.1f} img/s; step "
        f"{_ms(result['step_ms_median'])} ms median (min "
        f"{_ms(result['step_ms_min'])}, quartiles "
        f"{_ms(result['step_ms_p25'])}-{_ms(result['step_ms_p75'])}, max "
        f"{_ms(result['step_ms_max'])}) over {result['steps']} steps")


def _print_model(result):
  print(f"{result['model']} alpha {result['alpha']} {result['resolution']}px "
        f"batch {result['batch_size']} {result['dtype']} {result['mode']}, "
        f"ops {result['ops']} ({result['ops_resolved']}) on "
        f"{result['device_kind']}")
  _print_timing(result)
  print(f"  compile {result['compile_s']:.1f} s; peak memory "
        f"{result['peak_mem_mb']:.0f} MB ({result['peak_mem_source']})")
  if 'layer_ms' in result:
    print('  ms per step by layer kind (XLA ops, summed over threads):')
    for row in result['layer_ms'][:20]:
      print(f"    {row['ms_per_step']:9.1f}  {row['pass']:8s}  {row['layer']}")


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined only when it runs: modules that import
  this one (experiments.benchmark_peers) define their own."""
  flags.DEFINE_string(
      'model', None, f'Registry name, one of {sorted(models.REGISTRY)}.')
  flags.DEFINE_float('alpha', 1.0, 'Width multiplier.')
  flags.DEFINE_integer('resolution', 224, 'Input side in pixels.')
  flags.DEFINE_integer('batch_size', 32, 'Images per step.')
  flags.DEFINE_enum('dtype', 'float32', DTYPES, 'Compute dtype.')
  flags.DEFINE_enum('mode', 'train', MODES,
                    'train: a full train step; infer: a forward pass.')
  flags.DEFINE_enum('ops', 'auto', ops_lib.NAMES,
                    'Op set computing the layers (see mobilenet_jax.ops).')
  flags.DEFINE_integer('steps', None, 'Timed steps (>= 5; default 10, with '
                       '--tflite 30).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  flags.DEFINE_integer('seed', 0, 'Seed of parameters and inputs.')
  flags.DEFINE_bool(
      'data', False, 'Time the training input pipeline instead of a model.')
  flags.DEFINE_string('dataset', 'shapes',
                      'With --data: tfds name or folder:/path.')
  flags.DEFINE_string('data_dir', None, 'With --data: tfds data directory.')
  flags.DEFINE_string('split', 'train', 'With --data: the split.')
  flags.DEFINE_bool('antialias', False, 'With --data: antialiased resizing.')
  flags.DEFINE_string('tflite', None, 'Time one image through this exported '
                      'model on the LiteRT interpreter instead.')
  flags.DEFINE_integer('threads', 1, 'With --tflite: interpreter threads.')
  flags.DEFINE_string(
      'trace_dir', None, 'Trace the timed steps with jax.profiler into this '
      'directory and report their time per layer kind and pass.')
  flags.DEFINE_bool('json', False, 'Print only one JSON object on stdout.')
  config_flags.DEFINE_config_file(
      'config', config_files.repo_path('imagenet_mobilenet_v2'),
      'With --model or --data: the training config file whose optimizer, '
      'normalisation and data settings the steps use.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if sum([FLAGS.model is not None, FLAGS.data, FLAGS.tflite is not None]) != 1:
    raise app.UsageError('give exactly one of --model, --data and --tflite')
  # Libraries' own prints (tfds preparing a dataset) go to stderr, so that
  # stdout holds the result alone.
  with contextlib.redirect_stdout(sys.stderr):
    if FLAGS.tflite:
      result = benchmark_tflite(
          FLAGS.tflite, threads=FLAGS.threads, steps=FLAGS.steps or 30,
          warmup=FLAGS.warmup, seed=FLAGS.seed)
    elif FLAGS.data:
      result = benchmark_data(
          FLAGS.dataset, data_dir=FLAGS.data_dir, split=FLAGS.split,
          resolution=FLAGS.resolution, batch_size=FLAGS.batch_size,
          steps=FLAGS.steps or 10, warmup=FLAGS.warmup, seed=FLAGS.seed,
          antialias=FLAGS.antialias, config=FLAGS.config)
    else:
      result = benchmark_model(
          FLAGS.model, alpha=FLAGS.alpha, resolution=FLAGS.resolution,
          batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, mode=FLAGS.mode,
          ops=FLAGS.ops, steps=FLAGS.steps or 10,
          warmup=FLAGS.warmup, seed=FLAGS.seed, trace_dir=FLAGS.trace_dir,
          config=FLAGS.config)
  if FLAGS.json:
    json.dump(result, sys.stdout)
    sys.stdout.write('\n')
  elif FLAGS.tflite:
    print(f"{result['tflite']} ({result['resolution']}px, "
          f"{result['input_dtype']} input), batch 1, {result['threads']} "
          f"thread(s) on the LiteRT interpreter")
    _print_timing(result)
  elif FLAGS.data:
    print(f"{result['dataset']} {result['split']} input pipeline, "
          f"{result['resolution']}px batch {result['batch_size']}")
    _print_timing(result)
    print(f"  first batch after {result['setup_s']:.1f} s; peak memory "
          f"{result['peak_mem_mb']:.0f} MB ({result['peak_mem_source']})")
  else:
    _print_model(result)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
