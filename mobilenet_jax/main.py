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

import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from mobilenet_jax import cli
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


def main(argv):
  if len(argv) > 1:
    raise config_check.ConfigError(f'unexpected arguments: {argv[1:]}')
  if os.path.isfile(FLAGS.workdir):
    raise config_check.ConfigError(
        f'--workdir {FLAGS.workdir!r} is a file, not a folder')
  try:  # the values, still before the heavy imports
    config_check.check_config(FLAGS.config)
  except config_check.ConfigError as e:
    raise config_check.ConfigError(f'--config: {e}') from None
  cli.import_tensorflow_quietly()
  # pylint: disable=g-import-not-at-top
  import jax
  from mobilenet_jax import parallel
  from mobilenet_jax import train
  try:
    parallel.initialize_distributed(FLAGS.coordinator_address,
                                    FLAGS.num_processes, FLAGS.process_id)
  except parallel.DistributedStartupError as e:
    sys.exit(f'error: {e}')
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.NonFiniteMetricError,
          train.checkpoint.CheckpointWriteError) as e:
    sys.exit(f'error: {e}')
  if jax.process_count() == 1:
    _exit_now()


def _exit_now():
  """Exits at once, status 0. train_and_evaluate has returned: its results,
  metrics and checkpoints are written and its checkpoint manager closed.
  What a normal exit would still do is wait for the training input's
  close (train.train_and_evaluate) and tear down tf.data's and XLA's
  threads: 3-33 s (docs/performance.md, experiments/exit_delay.py) for
  nothing of ours. Not under jax.distributed, whose shutdown at exit
  the other processes wait for."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
  cli.run(main)
