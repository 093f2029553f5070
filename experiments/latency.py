r"""On-device latency: every registry model exported to LiteRT, float and int8,
beside Keras Applications' export of the same network and the MobileNetV3
paper's Pixel-1 latencies.

  python -m experiments.latency [--models=mobilenet_v1,...] [--alpha=1.0] \
      [--resolution=R] [--runs=50] [--warmup=5] [--instances=3] \
      [--calibration_images=8] [--systems=ours,keras] [--output=experiments/results/latency.md] [--json]

Every model is built at `alpha` with 1000 classes and random weights (latency
does not depend on their values) and exported by `mobilenet_jax.export` (the
`reference` op set through jax2tf, one fixed [1, R, R, 3] input): float, and
full-integer int8 (int8 input and output) calibrated on
`calibration_images` random-pixel images normalised with ImageNet's
statistics. Where Keras Applications has the network (`KERAS`), it is built
with `weights=None` on a [1, R, R, 3] input, logits out
(`classifier_activation=None`, V3 `include_preprocessing=False`), and
converted by `TFLiteConverter.from_keras_model` with the same converter
settings (`export.configure_converter`) and the same calibration images.

R is 224 unless `--resolution` is given, except MobileNetV4 Conv-M/L and
Hybrid-M/L, which run at their recipes' resolutions (256 and 384 px;
`configs/imagenet_mobilenet_v4_*.py`), as the V4 paper reports them.

Timing: every export gets `instances` LiteRT interpreters (XNNPACK, 1
thread, batch 1, one random input as `bench --tflite` gives it), all built
before any is timed. Then `warmup` untimed rounds and `runs` timed rounds;
each round invokes every interpreter in turn (ours and Keras' of the same
network next to each other, the order reversed every other round so that
neither always goes first), timing its second of two back-to-back invokes
(the first warms the caches the others evicted). An export's time in a
round is the mean over its interpreters: two interpreters of the same bytes
in one process can differ by up to 5% (where the heap puts their tensors),
more than the graphs of ours and Keras' differ. So a machine whose load
drifts slows every export alike, and no one placement decides a ratio. The
statistics are `bench.summarize`'s (median, quartiles, extremes) over the
rounds; "ours / Keras" is the median of the per-round ratios.

The paper's latencies are float, 224 px, one large core of a Pixel 1 phone
(TFLite, 2019): a different device and runtime, so compare rankings and
ratios (each model's latency relative to MobileNetV2's), not milliseconds.
"""

import contextlib
import datetime
import io
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS

# Every registry name (tests check this against models.REGISTRY).
DEFAULT_MODELS = ('mobilenet_v1', 'mobilenet_v1_standard', 'mobilenet_v2',
                  'mobilenet_v3_large', 'mobilenet_v3_small',
                  'mobilenet_v3_large_minimal', 'mobilenet_v3_small_minimal',
                  'mobilenet_v4_conv_small', 'mobilenet_v4_conv_medium',
                  'mobilenet_v4_conv_large', 'mobilenet_v4_hybrid_medium',
                  'mobilenet_v4_hybrid_large')
SYSTEMS = ('ours', 'keras')
QUANTIZATIONS = ('none', 'int8')
# Their recipes' (and the V4 paper's) resolutions, where not 224.
NATIVE_RESOLUTION = {'mobilenet_v4_conv_medium': 256,
                     'mobilenet_v4_conv_large': 384,
                     'mobilenet_v4_hybrid_medium': 256,
                     'mobilenet_v4_hybrid_large': 384}
# Keras Applications' builder and keywords for our registry names.
KERAS = {
    'mobilenet_v1': ('MobileNet', {}),
    'mobilenet_v2': ('MobileNetV2', {}),
    'mobilenet_v3_large': ('MobileNetV3Large',
                           {'include_preprocessing': False}),
    'mobilenet_v3_small': ('MobileNetV3Small',
                           {'include_preprocessing': False}),
    'mobilenet_v3_large_minimal': ('MobileNetV3Large', {
        'include_preprocessing': False, 'minimalistic': True}),
    'mobilenet_v3_small_minimal': ('MobileNetV3Small', {
        'include_preprocessing': False, 'minimalistic': True}),
}
# Float, 224 px, alpha 1.0, one large core of a Pixel 1 (ms): MobileNetV3
# paper (Howard et al. 2019, arXiv 1905.02244v5) table 3; the minimalistic
# models are not in the paper, their figures are TF-slim's
# research/slim/nets/mobilenet/README.md (which gives V3-Large as 51.2).
PAPER_PIXEL1_MS = {
    'mobilenet_v2': (64.0, 'V3 paper table 3'),
    'mobilenet_v3_large': (51.0, 'V3 paper table 3'),
    'mobilenet_v3_small': (15.8, 'V3 paper table 3'),
    'mobilenet_v3_large_minimal': (44.1, 'TF-slim README'),
    'mobilenet_v3_small_minimal': (12.2, 'TF-slim README'),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE = 'mobilenet_v2'  # latencies relative to this model's


def resolution_of(name: str, resolution: int | None) -> int:
  return resolution or NATIVE_RESOLUTION.get(name, 224)


def calibration_images(count: int, resolution: int,
                       seed: int = 0) -> np.ndarray:
  """`count` images of uniform random pixels, normalised with ImageNet's
  mean and std as the ImageNet recipes feed the network: [n, R, R, 3]."""
  pixels = np.random.default_rng(seed).integers(
      0, 256, (count, resolution, resolution, 3))
  return ((pixels / 255 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def export_ours(name: str, alpha: float, resolution: int, quantize: str,
                calibration: np.ndarray) -> bytes:
  """Our registry model at random weights, through `export.to_tflite`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import export  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model(name, alpha=alpha, num_classes=1000,
                              ops='reference')
  variables = jax.jit(model.init)(
      jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)))
  return export.to_tflite(model, variables, resolution, quantize,
                          calibration if quantize == 'int8' else None)


def export_keras(name: str, alpha: float, resolution: int, quantize: str,
                 calibration: np.ndarray) -> bytes:
  """Keras Applications' network of the same name, converted with our
  converter settings."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import export  # pylint: disable=g-import-not-at-top
  builder, kwargs = KERAS[name]
  model = getattr(keras.applications, builder)(
      input_tensor=keras.Input(batch_shape=(1, resolution, resolution, 3)),
      alpha=alpha, weights=None, classes=1000, classifier_activation=None,
      **kwargs)
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  export.configure_converter(converter, quantize,
                             calibration if quantize == 'int8' else None)
  # from_keras_model prints the SavedModel's signature to stdout.
  with contextlib.redirect_stdout(io.StringIO()):
    return converter.convert()


def build_exports(names, systems, alpha: float, resolution: int | None,
                  calibration_count: int) -> list[dict]:
  """One dict per export (system, model, quantization), ours and Keras' of
  the same network next to each other: the .tflite bytes, its op counts and
  the conversion time."""
  from mobilenet_jax import litert  # pylint: disable=g-import-not-at-top
  exports = []
  for name in names:
    side = resolution_of(name, resolution)
    calibration = calibration_images(calibration_count, side)
    for quantize in QUANTIZATIONS:
      for system in systems:
        if system == 'keras' and name not in KERAS:
          continue
        exporter = export_ours if system == 'ours' else export_keras
        start = time.perf_counter()
        content = exporter(name, alpha, side, quantize, calibration)
        exports.append({
            'system': system, 'model': name, 'resolution': side,
            'quantization': quantize, 'content': content,
            'size_bytes': len(content),
            'convert_s': time.perf_counter() - start,
            'op_counts': litert.op_counts(content=content)})
        print(f'exported {system} {name} {side}px {quantize} '
              f'({exports[-1]["convert_s"]:.0f} s)', file=sys.stderr,
              flush=True)
  return exports


def _input(interpreter, seed: int = 0) -> np.ndarray:
  """A random input of the interpreter's type, as `bench --tflite`."""
  (detail,) = interpreter.get_input_details()
  rng = np.random.default_rng(seed)
  if detail['dtype'] == np.float32:
    image = rng.standard_normal(detail['shape'])
  else:
    image = rng.integers(-128, 128, detail['shape'])
  interpreter.set_tensor(detail['index'], image.astype(detail['dtype']))
  return image


def time_exports(exports: list[dict], runs: int, warmup: int,
                 instances: int) -> None:
  """Adds 'times' (seconds, one per timed round: the mean over the export's
  `instances` interpreters) to every export, all interleaved, the order
  reversed every other round (see the module docstring)."""
  from mobilenet_jax import litert  # pylint: disable=g-import-not-at-top
  slots = []  # (export index, interpreter), `instances` passes over exports
  for _ in range(instances):
    for index, e in enumerate(exports):
      interpreter = litert.load(content=e['content'], threads=1)
      _input(interpreter)
      interpreter.invoke()  # builds XNNPACK's packed weights
      slots.append((index, interpreter))
  for e in exports:
    e['times'] = []
  for i in range(warmup + runs):
    elapsed = np.zeros(len(exports))
    for index, interpreter in (slots if i % 2 == 0 else slots[::-1]):
      interpreter.invoke()
      start = time.perf_counter()
      interpreter.invoke()
      elapsed[index] += time.perf_counter() - start
    if i >= warmup:
      for e, total in zip(exports, elapsed):
        e['times'].append(total / instances)


def summarize(exports: list[dict]) -> list[dict]:
  """Rows: an export's statistics (`bench.summarize`), and where Keras has
  the network the median per-round ratio ours / Keras and, for int8, the
  median per-round ratio int8 / float of the same system."""
  from mobilenet_jax import bench  # pylint: disable=g-import-not-at-top
  times = {(e['system'], e['model'], e['quantization']): np.array(e['times'])
           for e in exports}
  rows = []
  for e in exports:
    key = (e['system'], e['model'], e['quantization'])
    stats = bench.summarize(e['times'], 1)
    row = {k: v for k, v in e.items() if k not in ('content', 'times')}
    row.update({k: v for k, v in stats.items() if k != 'img_per_sec'})
    row['runs'] = len(e['times'])
    keras = times.get(('keras', e['model'], e['quantization']))
    row['ours_over_keras'] = (
        float(np.median(times[key] / keras))
        if e['system'] == 'ours' and keras is not None else None)
    floats = times.get((e['system'], e['model'], 'none'))
    row['int8_over_float'] = (
        float(np.median(times[key] / floats))
        if e['quantization'] == 'int8' else None)
    rows.append(row)
  return rows


def _ms(row: dict | None) -> str:
  if row is None:
    return '-'
  return (f"{row['step_ms_median']:.2f} ({row['step_ms_p25']:.2f}-"
          f"{row['step_ms_p75']:.2f})")


def _ratio(value: float | None) -> str:
  return '-' if value is None else f'{value:.2f}'


def latency_table(rows: list[dict]) -> str:
  """One line per (model, quantization): ours and Keras' median latency
  with quartiles, ours / Keras, int8 / float, the paper's Pixel-1 float."""
  by_key = {(r['system'], r['model'], r['quantization']): r for r in rows}
  lines = ['| model | px | quantization | ours ms (quartiles) | '
           'Keras ms (quartiles) | ours / Keras | int8 / float (ours) | '
           'int8 / float (Keras) | paper Pixel-1 ms (float) |',
           '|' + '---|' * 9]
  for r in rows:
    if r['system'] != 'ours':
      continue
    keras = by_key.get(('keras', r['model'], r['quantization']))
    paper = PAPER_PIXEL1_MS.get(r['model'])
    lines.append(
        f"| {r['model']} | {r['resolution']} | {r['quantization']} | "
        f"{_ms(r)} | {_ms(keras)} | {_ratio(r['ours_over_keras'])} | "
        f"{_ratio(r['int8_over_float'])} | "
        f"{_ratio(keras and keras['int8_over_float'])} | "
        f"{paper[0] if paper and r['quantization'] == 'none' else '-'} |")
  return '\n'.join(lines)


def relative_table(rows: list[dict]) -> str:
  """Float latency relative to MobileNetV2's, ours, Keras' and the paper's
  (the comparison across devices that means something)."""
  floats = {(r['system'], r['model']): r['step_ms_median'] for r in rows
            if r['quantization'] == 'none'}
  lines = ['| model | ours / V2 | Keras / V2 | paper (Pixel 1) / V2 |',
           '|---|---|---|---|']
  for (system, name), ms in floats.items():
    if system != 'ours':
      continue
    ours = ms / floats[('ours', REFERENCE)] if ('ours', REFERENCE) in floats else None
    keras = (floats[('keras', name)] / floats[('keras', REFERENCE)]
             if ('keras', name) in floats and ('keras', REFERENCE) in floats
             else None)
    paper = (PAPER_PIXEL1_MS[name][0] / PAPER_PIXEL1_MS[REFERENCE][0]
             if name in PAPER_PIXEL1_MS else None)
    lines.append(f'| {name} | {_ratio(ours)} | {_ratio(keras)} | '
                 f'{_ratio(paper)} |')
  return '\n'.join(lines)


def op_lines(rows: list[dict]) -> str:
  """One line per export: its op counts by type."""
  return '\n'.join(
      f"- {r['system']} {r['model']} {r['resolution']}px "
      f"{r['quantization']} ({r['size_bytes'] / 2**20:.1f} MiB): "
      + ', '.join(f'{op} {n}' for op, n in r['op_counts'].items())
      for r in rows) + '\n'


def targets(rows: list[dict]) -> list[str]:
  """The issue's latency targets, as measured here."""
  by_key = {(r['system'], r['model'], r['quantization']): r for r in rows}
  lines = []
  for name in ('mobilenet_v1', 'mobilenet_v2', 'mobilenet_v3_large',
               'mobilenet_v3_small'):
    row = by_key.get(('ours', name, 'none'))
    if row and row['ours_over_keras'] is not None:
      met = 'met' if row['ours_over_keras'] <= 1.0 else 'NOT met'
      lines.append(f"{name} float ours / Keras <= 1.0: "
                   f"{row['ours_over_keras']:.3f}, {met}")
  row = by_key.get(('ours', 'mobilenet_v2', 'int8'))
  if row:
    met = 'met' if row['int8_over_float'] <= 0.55 else 'NOT met'
    lines.append(f"mobilenet_v2 int8 / float <= 0.55: "
                 f"{row['int8_over_float']:.3f}, {met}")
  return lines


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return f'{cpu}, {os.cpu_count()} cores'


def _versions() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  names = ('jax', 'tensorflow-cpu', 'tensorflow', 'keras', 'ai-edge-litert')
  found = []
  for name in names:
    try:
      found.append(f'{name} {metadata.version(name)}')
    except metadata.PackageNotFoundError:
      pass
  return ', '.join(found)


def report(rows: list[dict], *, command: str, started: str, loads: tuple,
           calibration_count: int, instances: int) -> str:
  """The markdown report."""
  native = sorted({(r['model'], r['resolution']) for r in rows
                   if r['model'] in NATIVE_RESOLUTION})
  notes = [
      f'Run {started} on {_machine()} ({_versions()}); load average '
      f'{loads[0]:.1f} at the start, {loads[1]:.1f} at the end: other '
      'processes were running, which is why every export is timed '
      'interleaved with the others (see experiments/latency.py).',
      'LiteRT interpreter with XNNPACK, 1 thread, batch 1; median and '
      f'quartiles over {rows[0]["runs"]} timed rounds per export after '
      f'warm-up, each round\'s time the mean over {instances} '
      'interpreters of the export (two of the same bytes can differ by up '
      'to 5%), the order reversed every other round. "ours / Keras" and '
      '"int8 / float" are medians of the per-round ratios.',
      'Weights are random (latency does not depend on them); int8 is '
      'full-integer with int8 input and output, calibrated on '
      f'{calibration_count} random-pixel images normalised with '
      "ImageNet's statistics, the same for ours and Keras'.",
      'Keras: keras.applications built with weights=None on a [1, R, R, 3] '
      'input, classifier_activation=None, V3 include_preprocessing=False, '
      'converted by TFLiteConverter.from_keras_model with our converter '
      'settings. Keras has no MobileNetV4.',
  ]
  if native:
    notes.append('MobileNetV4 at its recipe\'s resolution: ' + ', '.join(
        f'{name} {side} px' for name, side in native) + '.')
  notes.append(
      'Paper: float, 224 px, one large core of a Pixel 1 (TFLite, 2019), '
      'from the MobileNetV3 paper, table 3 (V2 64 ms, V3-Large 51, '
      'V3-Small 15.8; TF-slim\'s README gives V3-Large 51.2 and the '
      'minimalistic models). A different device and runtime: compare '
      'rankings and ratios to V2, not milliseconds.')
  parts = ['# On-device latency (LiteRT)\n',
           f'Command: `{command}`\n', *(f'{n}\n' for n in notes),
           '## Latency\n', latency_table(rows) + '\n',
           '## Float latency relative to MobileNetV2\n',
           relative_table(rows) + '\n',
           '## Targets (issue 20)\n',
           ''.join(f'- {line}\n' for line in targets(rows)) or '-\n',
           '## Ops by type\n', op_lines(rows)]
  return '\n'.join(parts)


def define_flags() -> None:
  flags.DEFINE_list('models', list(DEFAULT_MODELS), 'Registry names.')
  flags.DEFINE_float('alpha', 1.0, 'Width multiplier of every model.')
  flags.DEFINE_integer('resolution', None, 'Input side of every model '
                       '(default: 224; V4 Conv-M/L at their recipes\').')
  flags.DEFINE_integer('runs', 50, 'Timed runs per export (>= 5).')
  flags.DEFINE_integer('warmup', 5, 'Untimed rounds before them.')
  flags.DEFINE_integer('instances', 3, 'Interpreters per export, each '
                       'round\'s time their mean (>= 1).')
  flags.DEFINE_integer('calibration_images', 8, 'Random images calibrating '
                       'every int8 export.')
  flags.DEFINE_list('systems', list(SYSTEMS), f'Any of {list(SYSTEMS)}.')
  flags.DEFINE_string('output', 'experiments/results/latency.md',
                      'Where the markdown report goes.')
  flags.DEFINE_bool('json', False, 'Also print the rows as JSON.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from experiments import harness  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import models  # pylint: disable=g-import-not-at-top
  unknown = [n for n in FLAGS.models if n not in models.REGISTRY]
  if unknown:
    raise app.UsageError(f'--models: unknown {unknown}; registry names: '
                         f'{sorted(models.REGISTRY)}')
  if set(FLAGS.systems) - set(SYSTEMS) or 'ours' not in FLAGS.systems:
    raise app.UsageError(f'--systems: "ours" and optionally "keras", got '
                         f'{FLAGS.systems}')
  if FLAGS.runs < 5:
    raise app.UsageError(f'--runs must be >= 5, got {FLAGS.runs}')
  if FLAGS.instances < 1:
    raise app.UsageError(f'--instances must be >= 1, got {FLAGS.instances}')
  started = datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M UTC')
  load_start = os.getloadavg()[0]
  exports = build_exports(FLAGS.models, FLAGS.systems, FLAGS.alpha,
                          FLAGS.resolution, FLAGS.calibration_images)
  time_exports(exports, FLAGS.runs, FLAGS.warmup, FLAGS.instances)
  rows = summarize(exports)
  if FLAGS.json:
    print(json.dumps(rows, indent=2))
  harness.write_report(report(
      rows, command=harness.command_line('experiments.latency'),
      started=started, loads=(load_start, os.getloadavg()[0]),
      calibration_count=FLAGS.calibration_images, instances=FLAGS.instances))


if __name__ == '__main__':
  define_flags()
  app.run(main)
