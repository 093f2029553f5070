r"""How long `python -m mobilenet_jax.main` takes to exit after its last line.

  python -m experiments.exit_delay [--runs=3] [--steps=60] [--data_dir=DIR] \
      [--stack_after=6] [--interrupt]

Trains configs/default.py for `steps` steps into a fresh temporary workdir,
`runs` times, and reports, per run, the seconds from the "Final evaluation
written" line to the process' exit. With `--interrupt` each run gets a
Ctrl-C (SIGINT) 2 s after its first step and the seconds are counted from
the "stopped at step N: its checkpoint is saved" line. With `--stack_after=S` the process
prints every thread's Python stack (faulthandler) S seconds after that line
if it is still running: where the exit waits. docs/performance.md has the
numbers.
"""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

_RUNS = flags.DEFINE_integer('runs', 3, 'Training runs to time.')
_STEPS = flags.DEFINE_integer('steps', 60, 'Training steps per run.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data directory.')
_INTERRUPT = flags.DEFINE_bool(
    'interrupt', False, 'Ctrl-C each run after its first step; time the exit '
    'from the line saying its checkpoint is saved.')
_STACK_AFTER = flags.DEFINE_float(
    'stack_after', None, 'Print the stacks this many seconds after the last '
    'line, if the process is still running.')

# `main` with faulthandler listening on SIGUSR1.
WRAPPER = ('import faulthandler, runpy, signal, sys; '
           'faulthandler.register(signal.SIGUSR1, all_threads=True); '
           "sys.argv = ['main'] + sys.argv[1:]; "
           "runpy.run_module('mobilenet_jax.main', run_name='__main__')")


def exit_delay(workdir: str) -> float:
  """Seconds from the run's last line to its exit."""
  command = [sys.executable, '-c', WRAPPER, '--config=configs/default.py',
             f'--workdir={workdir}', f'--config.num_train_steps={_STEPS.value}',
             '--config.log_every_steps=20']
  if _DATA_DIR.value:
    command.append(f'--config.data.data_dir={_DATA_DIR.value}')
  process = subprocess.Popen(
      command, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  last_line = ('stopped at step' if _INTERRUPT.value
               else 'Final evaluation written')
  final = None
  for line in process.stderr:
    if _INTERRUPT.value and 'compiled and ran' in line:
      threading.Timer(2, process.send_signal, [signal.SIGINT]).start()
    if final is not None or last_line in line:
      sys.stderr.write(line)
    if final is None and last_line in line:
      final = time.monotonic()
      if _STACK_AFTER.value is not None:
        threading.Timer(_STACK_AFTER.value, lambda: process.poll() is None and
                        process.send_signal(signal.SIGUSR1)).start()
  if process.wait() != 0 or final is None:
    raise RuntimeError(f'the run failed (exit status {process.returncode})')
  return time.monotonic() - final


def main(argv):
  del argv
  delays = []
  for i in range(_RUNS.value):
    with tempfile.TemporaryDirectory() as workdir:
      delays.append(exit_delay(os.path.join(workdir, 'run')))
    print(f'run {i + 1}: exit {delays[-1]:.1f} s after the final line',
          flush=True)
  print(f'exit delay: {" / ".join(f"{d:.1f}" for d in delays)} s; load '
        f'average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')


if __name__ == '__main__':
  app.run(main)
