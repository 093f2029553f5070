"""Trains a MobileNet: a thin entry point around `train.train_and_evaluate`.

  python -m mobilenet_jax.main --config=configs/default.py --workdir=DIR \
      [--config.model.alpha=0.5 ...]

Re-running the same command on the same workdir resumes from its latest
checkpoint. Multi-host: on a Cloud TPU VM jax.distributed.initialize() detects
the slice; elsewhere pass --coordinator_address, --num_processes and
--process_id. With several processes the workdir must be shared (gs://).
"""

if __name__ == '__main__':
  # First, before the heavy imports: this may re-execute the process.
  from mobilenet_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_step_buffers_mapped()

import logging
import os
import re
import sys
import threading

from absl import app
from absl import flags
from ml_collections import config_flags

from mobilenet_jax import config_check

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and eval '
                    'results go (local or gs://).')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes.')
flags.DEFINE_integer('process_id', None, 'This process index.')
flags.mark_flags_as_required(['config', 'workdir'])

USAGE_ERROR = 2  # exit status of a flag or config error


def usage_error(message: str):
  """Exits with one line on stderr and status 2."""
  sys.stderr.write(f'error: {" ".join(message.split())}\n')
  sys.exit(USAGE_ERROR)


def parse_flags(argv):
  """absl's flag parsing, with a config file's or override's error (a
  missing file, a mistyped key: ml_collections' "Did you mean") as one
  line instead of a traceback. Config files import no library, so this
  happens before the heavy imports."""
  try:
    argv = FLAGS(argv)
    FLAGS.config.to_dict()  # a file that failed to load raises only here
    return argv
  except flags.Error as e:
    usage_error(str(e))
  except OSError as e:
    usage_error(f'--config: {str(e).splitlines()[-1].strip()}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    suggestion = re.search(r'Did you mean "(.+?)" instead of "(.+?)"', str(e))
    if suggestion:
      usage_error(f'--config: no field "{suggestion[2]}"; did you mean '
                  f'"{suggestion[1]}"?')
    if isinstance(e, (AttributeError, KeyError)):
      usage_error(f'--config: no field "{str(e).strip(chr(34) + chr(39))}"')
    usage_error(f'--config: {e}')


def _one_line_background_error(args):
  """threading.excepthook and sys.unraisablehook: one line, no traceback."""
  message = (str(args.exc_value).strip().splitlines() or [''])[0][:300]
  sys.stderr.write(f'error in the background: {args.exc_type.__name__}: '
                   f'{message}\n')


def main(argv):
  if len(argv) > 1:
    usage_error(f'unexpected arguments: {argv[1:]}')
  if os.path.isfile(FLAGS.workdir):
    usage_error(f'--workdir {FLAGS.workdir!r} is a file, not a folder')
  try:  # the values, still before the heavy imports
    config_check.check_config(FLAGS.config)
  except ValueError as e:
    usage_error(f'--config: {e}')
  # pylint: disable=g-import-not-at-top
  from mobilenet_jax import parallel
  from mobilenet_jax import train
  from mobilenet_jax import writers
  writers.quiet_orbax_info()
  # A failed checkpoint save fails in orbax's threads, asyncio tasks and
  # callbacks, which would print a traceback per array: one line each
  # instead; the failure itself is the last line (CheckpointWriteError).
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  threading.excepthook = sys.unraisablehook = _one_line_background_error
  try:
    parallel.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
  except parallel.DistributedStartupError as e:
    sys.exit(f'error: {e}')
  except ValueError as e:
    usage_error(str(e))
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.NonFiniteMetricError,
          train.checkpoint.CheckpointWriteError) as e:
    sys.exit(f'error: {e}')
  except ValueError as e:
    usage_error(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
