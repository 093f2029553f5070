r"""Our MobileNetV2 train and inference steps against PyTorch eager and Keras.

Times one step at a time of three systems on the same random batches:

  ours       mobilenet_jax.bench's jitted steps: `train.train_step` (forward,
             backward, TF RMSProp with weight decay, label smoothing,
             BatchNorm statistics, EMA 0.9999) and `model.apply(...,
             train=False)`;
  torch      PyTorch eager on the CPU: the MobileNetV2 of this file
             (`nn.Conv2d(..., groups=C)` depthwise convolutions), model and
             inputs in `torch.channels_last`; a train step is forward,
             cross-entropy, backward and an RMSprop (momentum 0.9) step, an
             inference step a forward pass under `torch.inference_mode`;
  keras_jax  Keras 3 on the JAX backend: `keras.applications.MobileNetV2`,
             its train step (`stateless_call`, `jax.value_and_grad`, RMSprop
             `stateless_apply`) and inference step each under `jax.jit`, the
             train step donating its state as `model.fit` does.

Every system is built (compiled, or its first step run) before any is timed,
then each of `warmup` untimed and `steps` timed rounds runs one step of every
(mode, system) in turn, so that the machine's load drifts alike over all of
them. Each step has a fresh batch, the same for every system: uint8 images
(N, R, R, 3) and labels from a numpy RNG, copied into each framework (NCHW
channels_last for torch) before the clock starts, ours as uint8 (its steps
normalise on the device, as in training), the peers' normalised to float32
on the host (`data.normalise`); a step is timed up to its
end (`jax.block_until_ready`; torch's CPU steps are synchronous). The table
gives each system's images per second at its median step, the step times'
median and range, its compile time (JAX) or first step (torch) and the
ratio ours / system of images per second.

  python -m experiments.benchmark_peers   # MobileNetV2 1.0, 224 px, batch 32
  python -m experiments.benchmark_peers --alpha=0.35 --resolution=64 \
      --batch_size=4 --systems=ours,torch --modes=infer --threads=2 \
      [--ops=auto] [--steps=5] [--warmup=2] [--json] [--out=PATH]

--threads is torch's intra-op threads (default: every CPU). On a machine
busy with other work, OpenMP threads that outnumber the free cores slow torch
down a hundredfold (2 cores, one busy with another job: a tiny inference
step took 5 ms on 1 thread, 1 s on 2); pass fewer there.

The peers are the optional dependency group `peers`
(`pip install -e '.[peers]'`: PyTorch; Keras 3 comes with tensorflow); a
system whose framework is missing is skipped with a note on stderr.

Targets, MobileNetV2 1.0 at 224 px, batch 32, float32: our train throughput
>= 1x PyTorch eager's and >= 3x Keras-JAX's; our inference >= 1x PyTorch
eager's.
"""

import os

# Keras reads its backend when first imported: set it before any import.
os.environ['KERAS_BACKEND'] = 'jax'

# pylint: disable=g-import-not-at-top
if __name__ == '__main__':
  # Before the heavy imports: this may re-execute the process. The tunables
  # hold for every system here (torch's buffers come from malloc too).
  from mobilenet_jax import host_memory
  host_memory.keep_step_buffers_mapped()

import contextlib
import dataclasses
import datetime
import importlib
import json
import shlex
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from configs import imagenet_mobilenet_v2
from mobilenet_jax import bench
from mobilenet_jax import data
from mobilenet_jax import models
from mobilenet_jax import ops as ops_lib
from mobilenet_jax import sweep_summary
from mobilenet_jax.layers import make_divisible
# pylint: enable=g-import-not-at-top

SYSTEMS = ('ours', 'torch', 'keras_jax')
MODES = bench.MODES
NUM_CLASSES = bench.NUM_CLASSES
# MobileNetV2, paper table 2: (t, c, n, s) after the 32-channel stride-2 stem.
# Written out here rather than taken from mobilenet_jax.specs, so that the
# peer is an independent implementation.
V2_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Our default optimizer's RMSProp settings (mobilenet_jax.optim), for the
# peers' RMSprop.
LEARNING_RATE, RMSPROP_DECAY, MOMENTUM, RMSPROP_EPSILON = 0.016, 0.9, 0.9, 2e-3
FLAGS = flags.FLAGS
# What to install for a system whose framework is missing.
_INSTALL = {'torch': "pip install -e '.[peers]'",
            'keras': 'it comes with tensorflow: pip install -e .'}


@dataclasses.dataclass
class Runner:
  """One (system, mode) ready to time.

  Attributes:
    system: one of SYSTEMS.
    mode: one of MODES.
    put: (images NHWC uint8, labels int) numpy -> this framework's inputs.
    step: runs one step on `put`'s inputs, to its end.
    setup_s: compile seconds (JAX) or first step seconds (torch).
    times: seconds of the timed steps.
  """
  system: str
  mode: str
  put: Callable[[np.ndarray, np.ndarray], Any]
  step: Callable[[Any], None]
  setup_s: float
  times: list[float] = dataclasses.field(default_factory=list)


def import_optional(module: str, system: str):
  """The module, or None after a one-line note on stderr."""
  try:
    return importlib.import_module(module)
  except ImportError:
    print(f'{module} not installed: skipping {system} ({_INSTALL[module]})',
          file=sys.stderr)
    return None


def torch_mobilenet_v2(alpha: float = 1.0, num_classes: int = NUM_CLASSES):
  """MobileNetV2 as a torch `nn.Module` (NCHW; channels_last is up to the
  caller): widths make_divisible(alpha * c, 8), the last conv's 1280 not
  shrunk for alpha < 1, BatchNorm epsilon 1e-3 and decay 0.999, ReLU6, no
  dropout."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  def conv_bn(inputs, outputs, kernel, stride=1, groups=1, relu6=True):
    layers = [nn.Conv2d(inputs, outputs, kernel, stride, padding=kernel // 2,
                        groups=groups, bias=False),
              nn.BatchNorm2d(outputs, eps=1e-3, momentum=1e-3)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if relu6 else []))

  class InvertedResidual(nn.Module):
    """1x1 expansion (none for t = 1), depthwise 3x3, linear 1x1
    projection, plus the input where shapes allow."""

    def __init__(self, inputs, outputs, stride, t):
      super().__init__()
      expanded = make_divisible(inputs * t)
      layers = [] if expanded == inputs else [conv_bn(inputs, expanded, 1)]
      self.body = nn.Sequential(
          *layers, conv_bn(expanded, expanded, 3, stride, groups=expanded),
          conv_bn(expanded, outputs, 1, relu6=False))
      self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      y = self.body(x)
      return x + y if self.residual else y

  width = make_divisible(32 * alpha)
  layers = [conv_bn(3, width, 3, 2)]
  for t, c, n, s in V2_ROWS:
    outputs = make_divisible(c * alpha)
    for i in range(n):
      layers.append(InvertedResidual(width, outputs, s if i == 0 else 1, t))
      width = outputs
  last = make_divisible(1280 * alpha) if alpha > 1 else 1280
  layers += [conv_bn(width, last, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
             nn.Linear(last, num_classes)]
  return nn.Sequential(*layers)


def _jax_put(images: np.ndarray, labels: np.ndarray) -> dict:
  return jax.block_until_ready(jax.device_put(
      {'image': images, 'label': labels.astype(np.int32)}))


def _float_images(images: np.ndarray) -> np.ndarray:
  """The peers' input: the uint8 images normalised on the host, float32."""
  recipe = imagenet_mobilenet_v2.get_config()
  return data.normalise(images, recipe.data.mean, recipe.data.std)


def _float_jax_put(images: np.ndarray, labels: np.ndarray) -> dict:
  return _jax_put(_float_images(images), labels)


def _jax_runner(system: str, mode: str, step, carry, batch: dict,
                put=_jax_put) -> Runner:
  """Compiles the jitted `step(carry, batch) -> (carry, out)`; the Runner
  threads the carry through its steps."""
  start = time.perf_counter()
  compiled = step.lower(carry, batch).compile()
  setup_s = time.perf_counter() - start

  def run(batch):
    nonlocal carry
    carry, _ = jax.block_until_ready(compiled(carry, batch))

  return Runner(system, mode, put, run, setup_s)


def _ours(mode: str, alpha: float, resolution: int, ops: str,
          batch: dict, seed: int) -> Runner:
  model = models.create_model('mobilenet_v2', num_classes=NUM_CLASSES,
                              alpha=alpha, ops=ops)
  # pylint: disable-next=protected-access
  make_step = bench._train_step_fn if mode == 'train' else bench._infer_step_fn
  step, carry = make_step(model, resolution, jax.random.PRNGKey(seed),
                          imagenet_mobilenet_v2.get_config())
  return _jax_runner('ours', mode, step, carry, batch)


def _keras_jax(keras, mode: str, alpha: float, resolution: int,
               batch: dict) -> Runner:
  """Keras' stateless API under jax.jit: the state is (trainable,
  non-trainable[, optimizer]) variable values."""
  if keras.backend.backend() != 'jax':
    raise RuntimeError('keras was imported with the '
                       f'{keras.backend.backend()!r} backend before this '
                       'module set KERAS_BACKEND=jax')
  model = keras.applications.MobileNetV2(
      weights=None, alpha=alpha, input_shape=(resolution, resolution, 3),
      classes=NUM_CLASSES)
  state = ([v.value for v in model.trainable_variables],
           [v.value for v in model.non_trainable_variables])
  if mode == 'infer':

    def infer_step(state, batch):
      probs, _ = model.stateless_call(*state, batch['image'], training=False)
      return state, probs

    return _jax_runner('keras_jax', mode, jax.jit(infer_step), state, batch,
                       _float_jax_put)

  optimizer = keras.optimizers.RMSprop(
      learning_rate=LEARNING_RATE, rho=RMSPROP_DECAY, momentum=MOMENTUM,
      epsilon=RMSPROP_EPSILON)
  optimizer.build(model.trainable_variables)
  loss_fn = keras.losses.SparseCategoricalCrossentropy()

  def loss(trainable, non_trainable, images, labels):
    probs, non_trainable = model.stateless_call(trainable, non_trainable,
                                                images, training=True)
    return loss_fn(labels, probs), non_trainable

  def train_step(state, batch):
    trainable, non_trainable, optimizer_state = state
    (value, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(
        trainable, non_trainable, batch['image'], batch['label'])
    trainable, optimizer_state = optimizer.stateless_apply(
        optimizer_state, grads, trainable)
    return (trainable, non_trainable, optimizer_state), value

  state += ([v.value for v in optimizer.variables],)
  return _jax_runner('keras_jax', mode,
                     jax.jit(train_step, donate_argnums=0), state, batch,
                     _float_jax_put)


def _torch(torch, mode: str, alpha: float, images: np.ndarray,
           labels: np.ndarray) -> Runner:
  """Eager steps of `torch_mobilenet_v2`; setup is the first step."""
  model = torch_mobilenet_v2(alpha).to(memory_format=torch.channels_last)

  def put(images, labels):
    # NHWC data seen as NCHW is channels_last already: no copy.
    nchw = torch.from_numpy(_float_images(images)).permute(0, 3, 1, 2)
    return (nchw.contiguous(memory_format=torch.channels_last),
            torch.from_numpy(labels.astype(np.int64)))

  if mode == 'train':
    model.train()
    optimizer = torch.optim.RMSprop(
        model.parameters(), lr=LEARNING_RATE, alpha=RMSPROP_DECAY,
        eps=RMSPROP_EPSILON, momentum=MOMENTUM)

    def step(inputs):
      images, labels = inputs
      optimizer.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(model(images), labels).backward()
      optimizer.step()
  else:
    model.eval()

    def step(inputs):
      with torch.inference_mode():
        model(inputs[0])

  inputs = put(images, labels)
  start = time.perf_counter()
  step(inputs)
  return Runner('torch', mode, put, step, time.perf_counter() - start)


def command_line(settings: dict) -> str:
  """The command that reproduces a report, every flag spelled out."""
  return shlex.join([
      'python', '-m', 'experiments.benchmark_peers',
      *(f'--{key}={settings[key]}' for key in (
          'alpha', 'resolution', 'batch_size', 'steps', 'warmup',
          'ops', 'threads', 'seed')),
      f"--modes={','.join(settings['modes'])}",
      f"--systems={','.join(settings['systems'])}"])


def check_settings(steps: int, warmup: int, batch_size: int,
                   modes: Sequence[str], systems: Sequence[str]) -> None:
  """Raises ValueError for counts bench refuses or unknown modes or
  systems."""
  # pylint: disable-next=protected-access
  bench._check_counts(steps, warmup, batch_size)
  for name, values, allowed in (('modes', modes, MODES),
                                ('systems', systems, SYSTEMS)):
    if not values or set(values) - set(allowed):
      raise ValueError(f'{name} must be among {list(allowed)}, got '
                       f'{list(values)}')


def benchmark(*, alpha: float = 1.0, resolution: int = 224,
              batch_size: int = 32, steps: int = 5, warmup: int = 2,
              modes: Sequence[str] = MODES, systems: Sequence[str] = SYSTEMS,
              ops: str = 'auto', threads: int | None = None,
              seed: int = 0) -> dict:
  """Times every available system in every mode, alternating them.

  Args:
    alpha: MobileNetV2 width multiplier.
    resolution: input side in pixels.
    batch_size: images per step.
    steps: timed steps of each (mode, system), >= 5.
    warmup: untimed steps of each after its setup.
    modes: among MODES.
    systems: among SYSTEMS; those whose framework is missing are skipped.
    ops: our op set (mobilenet_jax.ops).
    threads: torch's intra-op threads; None: os.cpu_count().
    seed: seed of the batches and of ours' parameters.

  Returns:
    {'settings': what ran, with versions; 'command': command_line(settings);
     'results': one dict per (mode, system) run: 'system', 'mode',
     bench.summarize's figures, 'setup_s' (compile or first step seconds)
     and 'ours_ratio' (ours' img/s over this one's; None without ours)}.
  """
  check_settings(steps, warmup, batch_size, modes, systems)
  threads = threads or os.cpu_count()
  frameworks = {'ours': True}
  if 'torch' in systems:
    frameworks['torch'] = import_optional('torch', 'PyTorch')
  if 'keras_jax' in systems:
    frameworks['keras_jax'] = import_optional('keras', 'Keras-JAX')
  systems = [s for s in systems if frameworks[s]]
  torch, keras = frameworks.get('torch'), frameworks.get('keras_jax')
  if torch:
    torch.set_num_threads(threads)

  rng = np.random.default_rng(seed)

  def host_batch():
    return (rng.integers(0, 256, (batch_size, resolution, resolution, 3),
                         np.uint8),
            rng.integers(0, NUM_CLASSES, batch_size))

  images, labels = host_batch()
  batch = _jax_put(images, labels)
  runners = []
  for mode in modes:
    for system in systems:
      if system == 'ours':
        runners.append(_ours(mode, alpha, resolution, ops, batch,
                             seed))
      elif system == 'torch':
        runners.append(_torch(torch, mode, alpha, images, labels))
      else:
        runners.append(_keras_jax(keras, mode, alpha, resolution,
                                  _float_jax_put(images, labels)))
  for i in range(warmup + steps):
    images, labels = host_batch()
    for runner in runners:
      inputs = runner.put(images, labels)
      start = time.perf_counter()
      runner.step(inputs)
      if i >= warmup:
        runner.times.append(time.perf_counter() - start)

  results = [{'system': r.system, 'mode': r.mode,
              **bench.summarize(r.times, batch_size), 'setup_s': r.setup_s}
             for r in runners]
  ours = {r['mode']: r['img_per_sec'] for r in results if r['system'] == 'ours'}
  for result in results:
    result['ours_ratio'] = (ours[result['mode']] / result['img_per_sec']
                            if result['mode'] in ours else None)
  settings = {
      'model': 'mobilenet_v2', 'alpha': alpha, 'resolution': resolution,
      'batch_size': batch_size, 'dtype': 'float32', 'steps': steps,
      'warmup': warmup, 'modes': list(modes), 'systems': systems,
      'ops': ops, 'ops_resolved': ops_lib.resolve(ops),
      'threads': threads, 'seed': seed, 'cpu_count': os.cpu_count(),
      'device_kind': jax.local_devices()[0].device_kind,
      'jax': jax.__version__,
      'torch': torch.__version__ if torch else None,
      'keras': keras.__version__ if keras else None,
      'date': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
  }
  return {'settings': settings, 'command': command_line(settings),
          'results': results}


def markdown(report: dict) -> str:
  """The settings, the command and one table row per (mode, system)."""
  s = report['settings']
  versions = ', '.join(f'{name} {s[name]}' for name in ('jax', 'torch', 'keras')
                       if s[name])
  header = ['system', 'mode', 'img/s (median)', 'step ms (median)',
            'step ms (min-max)', 'compile / first step (s)', 'ours / system']
  rows = [[r['system'], r['mode'], f"{r['img_per_sec']:.1f}",
           f"{r['step_ms_median']:.1f}",
           f"{r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}",
           f"{r['setup_s']:.1f}",
           '' if r['ours_ratio'] is None else f"{r['ours_ratio']:.2f}"]
          for r in report['results']]
  return '\n'.join([
      f"MobileNetV2 alpha {s['alpha']:g}, {s['resolution']} px, batch "
      f"{s['batch_size']}, {s['dtype']}; {s['steps']} timed steps after "
      f"{s['warmup']} warmup, systems alternating step by step.",
      f"{versions}; {s['device_kind']}, {s['cpu_count']} CPUs, torch threads "
      f"{s['threads']}; our ops {s['ops']} ({s['ops_resolved']}); "
      f"{s['date']}.",
      f"Command: `{report['command']}`", '',
      sweep_summary.markdown_table(header, rows)])


def define_flags() -> None:
  """This script's flags."""
  flags.DEFINE_float('alpha', 1.0, 'Width multiplier.')
  flags.DEFINE_integer('resolution', 224, 'Input side in pixels.')
  flags.DEFINE_integer('batch_size', 32, 'Images per step.')
  flags.DEFINE_integer('steps', 5, 'Timed steps of each system (>= 5).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps of each system after its '
                       'setup.')
  flags.DEFINE_enum(
      'ops', 'auto', ops_lib.NAMES,
      'Our op set (see mobilenet_jax.ops).')
  flags.DEFINE_integer('seed', 0, 'Seed of the batches and of our parameters.')
  flags.DEFINE_bool('json', False, 'Print only one JSON object on stdout.')
  flags.DEFINE_list('modes', list(MODES), f'Among {list(MODES)}.')
  flags.DEFINE_list('systems', list(SYSTEMS), f'Among {list(SYSTEMS)}.')
  flags.DEFINE_integer('threads', None,
                       'torch.set_num_threads; default os.cpu_count().')
  flags.DEFINE_string('out', None,
                      'Also write the markdown report to this path.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    check_settings(FLAGS.steps, FLAGS.warmup, FLAGS.batch_size, FLAGS.modes,
                   FLAGS.systems)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  # Libraries' own prints go to stderr, so that stdout holds the result alone.
  with contextlib.redirect_stdout(sys.stderr):
    report = benchmark(
        alpha=FLAGS.alpha, resolution=FLAGS.resolution,
        batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup,
        modes=FLAGS.modes, systems=FLAGS.systems,
        ops=FLAGS.ops, threads=FLAGS.threads,
        seed=FLAGS.seed)
  text = markdown(report)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text)
  if FLAGS.json:
    json.dump(report, sys.stdout)
    sys.stdout.write('\n')
  else:
    print(text, end='')


if __name__ == '__main__':
  define_flags()
  app.run(main)
