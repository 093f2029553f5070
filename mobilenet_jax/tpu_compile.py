r"""Compiles the real train and eval steps for a TPU topology, without a TPU.

  python -m mobilenet_jax.tpu_compile \
      --config=configs/tpu.py:recipe=imagenet_mobilenet_v2 \
      --topology=v5e:2x2 [--mode=train|eval|both] [--json]

With libtpu installed (`pip install -e '.[tpu]'`), JAX describes a TPU
slice by name (`jax.experimental.topologies.get_topology_desc`) and compiles
for its devices on any host. This lowers `train.jit_train_step` and
`evaluation.jit_eval_step` exactly as a run of the config would on that
slice (global batch `batch_size` split over its chips, state replicated,
the op set `auto` resolves to on TPU: `reference`), compiles them with the
TPU compiler and reports, per step:

- the compiler's estimates for one chip (`cost_analysis`): flops, bytes
  accessed, and its memory plan (`memory_analysis`): argument, output and
  temporary bytes;
- the compile time on this host;
- facts read off the optimised HLO: grouped convolutions (depthwise:
  `feature_group_count` > 1, forward and input-gradient), while loops,
  all-reduces with the element types of the values they reduce (BatchNorm
  statistics, gradients), float32 activation-sized buffers (NHWC with
  the per-chip batch, in memory between fusions), the image parameters'
  types, and the compiler's estimated cycles summed over the instructions
  (`estimated_cycles` in their backend configs; a loop body counts once).

These are the compiler's estimates and plans, not measurements on a TPU.
"""

if __name__ == '__main__':
  import os  # pylint: disable=g-import-not-at-top
  # The steps are compiled for the named topology; nothing runs here, so
  # JAX itself needs no accelerator (libtpu would look for a local TPU).
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import collections
import json
import re
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from mobilenet_jax import cli
from mobilenet_jax import config_check

TOPOLOGY_EXAMPLES = ('v5e:2x2', 'v4:2x2x1', 'v5e:4x4', 'v5p:2x2x1')
MODES = ('train', 'eval', 'both')
INSTALL_HINT = ("libtpu is not installed: pip install -e '.[tpu]' (the "
                'libtpu that jax[tpu] pins for this jax)')


def _libtpu_startup_noise(line: str) -> bool:
  """What libtpu prints as it starts on a host without TPUs: it cannot
  read the accelerator type and worker names from the VM's metadata, which
  a compile for a named topology does not need."""
  return any(text in line for text in (
      'could not determine TPU', 'Logging before InitGoogle()',
      '=== Source Location Trace', 'libtpu_init_utils.cc'))


def topology_mesh(topology: str):
  """A one-axis data-parallel mesh over the chips of TPU `topology`."""
  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies
  from mobilenet_jax import parallel
  try:
    with cli.native_stderr_without(_libtpu_startup_noise):
      description = topologies.get_topology_desc(topology_name=topology,
                                                 platform='tpu')
  except RuntimeError as e:
    raise config_check.ConfigError(
        f'topology must name a TPU slice, e.g. '
        f'{", ".join(TOPOLOGY_EXAMPLES)}; got {topology!r} '
        f'({str(e).splitlines()[0]})') from e
  return jax.sharding.Mesh(description.devices, (parallel.DATA_AXIS,))


def _entry_computation(hlo_text: str) -> str:
  """The ENTRY computation of an HLO module's text: its instructions'
  results are buffers in memory (those inside fusions are not)."""
  start = hlo_text.index('\nENTRY')
  return hlo_text[start:hlo_text.index('\n}\n', start)]


def hlo_facts(hlo_text: str, batch_per_chip: int) -> dict:
  """Counts in an optimised HLO module's text (see the module docstring):
  all-reduces and the element types of the values they reduce, the
  float32 NHWC buffers of the step's per-chip batch, the types of the
  entry's image parameters (NHWC, 3 channels) and the estimated cycles."""
  reduced_types = collections.Counter()
  all_reduces = re.findall(r'= (.*?) all-reduce(?:-start)?\(', hlo_text)
  for result_type in all_reduces:
    reduced_types.update(re.findall(r'(\w+)\[', result_type))
  f32_buffers = set()
  for result_type in re.findall(r'^\s*(?:ROOT )?%\S+ = (.*?) [\w-]+\(',
                                _entry_computation(hlo_text), re.MULTILINE):
    f32_buffers.update(re.findall(
        rf'f32\[{batch_per_chip},\d+,\d+,\d+\]', result_type))
  cycles = re.findall(r'"estimated_cycles":"?(\d+)', hlo_text)
  return {
      'grouped_convolutions': len(re.findall(
          r'feature_group_count=(?!1\b)\d+', hlo_text)),
      'while_loops': len(re.findall(r' while\(', hlo_text)),
      'all_reduces': len(all_reduces),
      'all_reduced_types': dict(sorted(reduced_types.items())),
      'f32_activation_buffers': sorted(f32_buffers),
      'image_parameters': re.findall(
          rf'= (\w+\[{batch_per_chip},\d+,\d+,3\])\S* parameter\(',
          _entry_computation(hlo_text)),
      'estimated_cycles': sum(map(int, cycles)) if cycles else None,
  }


def _report(compiled, compile_s: float, batch_per_chip: int) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  return {
      'compile_s': compile_s,
      'flops': cost.get('flops'),
      'bytes_accessed': cost.get('bytes accessed'),
      'argument_bytes': memory.argument_size_in_bytes,
      'output_bytes': memory.output_size_in_bytes,
      'temp_bytes': memory.temp_size_in_bytes,
      **hlo_facts(compiled.as_text(), batch_per_chip),
  }


def compile_steps(config: ml_collections.ConfigDict, topology: str,
                  mode: str = 'both', num_classes: int = 1000,
                  train_examples: int = 1281167) -> dict:
  """Compiles the config's steps for `topology`; returns the report.

  `num_classes` and `train_examples` stand in for the dataset's (nothing is
  read): they fix the classifier and the schedule's steps per epoch.
  """
  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import evaluation
  from mobilenet_jax import models
  from mobilenet_jax import ops
  from mobilenet_jax import state as state_lib
  from mobilenet_jax import train
  if mode not in MODES:
    raise config_check.ConfigError(
        f'mode must be one of {list(MODES)}, got {mode!r}')
  mesh = topology_mesh(topology)
  chips = mesh.devices.size
  config = ml_collections.ConfigDict(config.to_dict())
  config.num_classes = num_classes
  config.steps_per_epoch = max(1, train_examples // config.batch_size)
  if config.num_train_steps <= 0:
    config.num_train_steps = int(config.num_epochs * config.steps_per_epoch)
  if config.batch_size % chips:
    raise config_check.ConfigError(
        f'batch_size must be a multiple of the {chips} chips of '
        f'{topology}, got {config.batch_size}')
  config.model.ops = ops.resolve(config.model.ops, 'tpu')
  model = state_lib.model_from_config(config.model, num_classes)
  resolution = models.input_resolution(config.data.rho,
                                       config.data.base_resolution)
  state = state_lib.abstract_train_state(config, model, resolution, mesh)
  images = (config.batch_size, resolution, resolution, 3)
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data'))

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)

  batch = {'image': spec(images, jnp.uint8),
           'label': spec(images[:1], jnp.int32)}
  report = {'topology': topology, 'chips': chips,
            'device_kind': mesh.devices.flat[0].device_kind,
            'model': config.model.name, 'ops': model.ops,
            'dtype': config.model.dtype, 'resolution': resolution,
            'global_batch': config.batch_size,
            'batch_per_chip': config.batch_size // chips}
  steps = {}
  if mode in ('train', 'both'):
    steps['train'] = (train.jit_train_step(config, model, state.params, mesh),
                      (state, batch))
  if mode in ('eval', 'both'):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    steps['eval'] = (evaluation.jit_eval_step(
                         model, num_classes, mesh, tuple(config.data.mean),
                         tuple(config.data.std)),
                     (variables, {**batch, 'mask': spec(images[:1],
                                                        jnp.bool_)}))
  for name, (step, args) in steps.items():
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    report[name] = _report(compiled, time.perf_counter() - start,
                           report['batch_per_chip'])
  return report


def format_report(report: dict) -> str:
  lines = [f"{report['model']} on {report['topology']} "
           f"({report['chips']} x {report['device_kind']}), ops "
           f"{report['ops']}, {report['dtype']}, {report['resolution']} px, "
           f"global batch {report['global_batch']} "
           f"({report['batch_per_chip']} per chip)"]
  for name in ('train', 'eval'):
    if name not in report:
      continue
    r = report[name]
    lines.append(
        f"  {name}: compiled in {r['compile_s']:.1f} s; per chip "
        f"{r['flops'] / 1e9:.1f} GFLOP, {r['bytes_accessed'] / 1e9:.2f} GB "
        f"accessed; memory: arguments {r['argument_bytes'] / 2**20:.0f} MiB,"
        f" temporaries {r['temp_bytes'] / 2**20:.0f} MiB; estimated cycles "
        f"{r['estimated_cycles'] or 'n/a'}")
    lines.append(
        f"    {r['grouped_convolutions']} grouped convolutions, "
        f"{r['while_loops']} while loops, {r['all_reduces']} all-reduces "
        f"(values by type {r['all_reduced_types']}), f32 activation buffers "
        f"{r['f32_activation_buffers'] or 'none'}, image input "
        f"{r['image_parameters']}")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined only when it runs."""
  config_flags.DEFINE_config_file('config', None, 'Training config file.')
  flags.DEFINE_string('topology', 'v5e:2x2',
                      f'TPU slice, e.g. {", ".join(TOPOLOGY_EXAMPLES)}.')
  flags.DEFINE_enum('mode', 'both', MODES, 'Which steps to compile.')
  flags.DEFINE_integer('num_classes', 1000, "Stands in for the dataset's.")
  flags.DEFINE_integer('train_examples', 1281167,
                       "Stands in for the dataset's (steps per epoch).")
  flags.DEFINE_bool('json', False, 'Print one JSON object.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise config_check.ConfigError(INSTALL_HINT) from None
  cli.import_tensorflow_quietly()
  # An executable compiled for a topology without its devices cannot be
  # loaded from JAX's persistent cache (a warning per step on a hit).
  jax.config.update('jax_enable_compilation_cache', False)
  report = compile_steps(FLAGS.config, FLAGS.topology, FLAGS.mode,
                         FLAGS.num_classes, FLAGS.train_examples)
  print(json.dumps(report) if FLAGS.json else format_report(report))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
