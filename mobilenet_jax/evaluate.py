"""Checkpoint evaluation: top-1, top-5 and loss over a whole split.

  python -m mobilenet_jax.evaluate --workdir=DIR [--step=N | --all | --watch]
      [--use_ema=true|false] [--dataset=NAME] [--split=SPLIT]
      [--config.data.rho=R --config.data.eval_crop_fraction=F
       --config.eval_batch_size=B ...]
  python -m mobilenet_jax.evaluate --tflite=PATH.tflite [--dataset=NAME] \
      [--split=SPLIT]

writes DIR/eval/step_<N>.json = {"step", "top1", "top5", "loss",
"num_examples", "ema", "checkpoint"}, the file training's final evaluation
writes, where it does not exist yet (training's own result is never
replaced). Another split, dataset or EMA setting than the run's own writes
DIR/eval/step_<N>.[<dataset>.]<split>.<ema|raw>.json beside it, e.g.
step_1000.test_to50pct.raw.json for --split='test[:50%]' --use_ema=false
(names: `checkpoint.result_variant`; the JSON adds "dataset" and "split").
`--config.KEY=VALUE` evaluates with another resolution, crop fraction,
batch or resize (`evaluation.EVAL_OVERRIDES`), into its own file beside the
run's, e.g. step_1000.test.raw.rho-0-857.json.
`--watch` is a sidecar evaluator: it polls the workdir for
new checkpoints and exits after evaluating the final step. The work is
`mobilenet_jax.evaluation`'s.

`--tflite` evaluates an export of a workdir's checkpoint
(`mobilenet_jax.export`) on the LiteRT interpreter, through the same
preprocessing, and writes DIR/eval/step_<N>.tflite_<quantization>.json
beside the JAX result (`mobilenet_jax.litert.evaluate`).
"""

if __name__ == '__main__':
  # First, before the heavy imports: this may re-execute the process.
  from mobilenet_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_step_buffers_mapped()
  from mobilenet_jax import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()

import json
import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags

from mobilenet_jax import cli
from mobilenet_jax import config_check
from mobilenet_jax import config_files
from mobilenet_jax import evaluation
from mobilenet_jax import litert

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A training workdir.')
flags.DEFINE_string('tflite', None, 'An exported .tflite model (instead of '
                    '--workdir).')
flags.DEFINE_integer('step', None, 'Evaluate this step (default: latest).')
flags.DEFINE_bool('all', False, 'Evaluate every kept checkpoint.')
flags.DEFINE_bool('watch', False, 'Poll for new checkpoints until the final '
                  'step (a sidecar evaluator).')
flags.DEFINE_float('poll_seconds', 30.0, 'Polling period of --watch.')
flags.DEFINE_float('watch_timeout', None, 'Give up --watch after this many '
                   'seconds without a new checkpoint.')
flags.DEFINE_enum('use_ema', None, ['true', 'false'], 'Evaluate the EMA '
                  'weights (default: when the run kept them).')
flags.DEFINE_string('dataset', None, 'Override data.dataset.')
flags.DEFINE_string('split', None, 'Override data.eval_split.')
config_flags.DEFINE_config_file(
    'converted_config', config_files.repo_path('default'), 'With --tflite '
    'of a converted model: the config file whose data settings and batch '
    'size evaluate it.')
flags.DEFINE_bool('force', False, 'Evaluate a step again although its result '
                  'is stored (into a new file step_<N>[.<variant>].<k>.json).')


def _override_fields() -> ml_collections.ConfigDict:
  """evaluation.EVAL_OVERRIDES as a ConfigDict of typed None placeholders."""
  fields = ml_collections.ConfigDict()
  for key, kind in evaluation.EVAL_OVERRIDES.items():
    *parents, leaf = key.split('.')
    node = fields
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = config_dict.placeholder(kind)
  return fields


_OVERRIDES = config_flags.DEFINE_config_dict(
    'config', _override_fields(), 'Run config fields to evaluate with: '
    f'--config.KEY=VALUE, KEY one of {", ".join(evaluation.EVAL_OVERRIDES)}.')


def _overrides() -> dict:
  """{dotted field: value} of the --config.KEY=VALUE flags given."""
  values = {}
  for key in evaluation.EVAL_OVERRIDES:
    node = _OVERRIDES.value
    for part in key.split('.'):
      node = node[part]
    if node is not None:
      values[key] = node
  return values


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if (FLAGS.workdir is None) == (FLAGS.tflite is None):
    raise config_check.ConfigError('give exactly one of --workdir and --tflite')
  if sum([FLAGS.step is not None, FLAGS.all, FLAGS.watch]) > 1:
    raise config_check.ConfigError('--step, --all and --watch are exclusive')
  if FLAGS.tflite:
    print(json.dumps(litert.evaluate(
        FLAGS.tflite, FLAGS.dataset, FLAGS.split,
        converted_config=FLAGS.converted_config)))
    return
  use_ema = None if FLAGS.use_ema is None else FLAGS.use_ema == 'true'
  evaluator = evaluation.Evaluator(FLAGS.workdir, use_ema, FLAGS.dataset,
                                   FLAGS.split, _overrides())
  if FLAGS.watch:
    try:
      evaluation.watch(evaluator, FLAGS.poll_seconds, FLAGS.watch_timeout)
    except TimeoutError as e:
      sys.exit(f'error: {e}')
    return
  steps = evaluator.steps()
  if not steps:
    raise config_check.ConfigError(
        f'workdir {FLAGS.workdir!r} has no checkpoints')
  if FLAGS.all:
    todo = steps
  elif FLAGS.step is not None:
    if FLAGS.step not in steps:
      raise config_check.ConfigError(
          f'step must be one of the saved steps {steps}, got {FLAGS.step}')
    todo = [FLAGS.step]
  else:
    todo = [steps[-1]]
  for step in todo:
    print(json.dumps(evaluator.evaluate(step, force=FLAGS.force)))


if __name__ == '__main__':
  cli.run(main)
