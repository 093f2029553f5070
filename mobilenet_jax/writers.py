"""Where training metrics go: TensorBoard events, WORKDIR/metrics.jsonl and a
console line. Only process 0 writes."""

import json
import time

from absl import logging
import jax
from etils import epath
import tensorflow as tf


class MetricsWriter:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      path = epath.Path(workdir)
      path.mkdir(parents=True, exist_ok=True)
      self._tb = tf.summary.create_file_writer(str(path / 'tensorboard'))
      self._jsonl = (path / 'metrics.jsonl').open('a')

  def write(self, step: int, metrics: dict, prefix: str = 'train') -> None:
    if not self.enabled:
      return
    with self._tb.as_default(step=step):
      for name, value in metrics.items():
        tf.summary.scalar(f'{prefix}/{name}', value)
    self._tb.flush()
    record = {'step': step, 'split': prefix, 'time': time.time(), **metrics}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def console_line(step: int, total: int, metrics: dict,
                 img_per_sec: float | None = None,
                 seconds_left: float | None = None) -> None:
  """'step 120/1500  loss 1.234  top1 0.500  lr 0.01  380 img/s  ETA 3m05s
  input wait 2%'; without a timing (no compiled step timed yet) 'img/s and
  ETA after the first compiled steps' in its place. The input wait is the
  window's fraction of wall time spent waiting for the next batch."""
  if img_per_sec is None:
    timing = 'img/s and ETA after the first compiled steps'
  else:
    timing = (f'{img_per_sec:.0f} img/s  ETA {int(seconds_left // 60)}m'
              f'{int(seconds_left % 60):02d}s')
  logging.info('step %d/%d  loss %.4f  top1 %.3f  lr %.4g  %s  input wait '
               '%.0f%%', step, total, metrics['loss'], metrics['top1'],
               metrics['learning_rate'], timing,
               100 * metrics['input_wait'])

