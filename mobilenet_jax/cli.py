"""What every command (`python -m mobilenet_jax.X`) shares: the error policy,
quiet library logs and `--verbosity`.

- A user's mistake (`config_check.ConfigError`: a flag, a config value or
  argument, a path that is not what the command needs) prints one line,
  `error: ...`, on stderr and exits with status 2; absl's flag errors and
  ml_collections' config file errors too. Any other exception is a bug and
  keeps its traceback (exit status 1). A Ctrl-C that stops a command (a
  second one in training) is one line, exit status 130.
- At the default `--verbosity=0` the libraries' INFO logs (orbax, tfds,
  optax, JAX's backend probing), two orbax warnings that are not problems
  (`HARMLESS_WARNINGS`) and TensorFlow's import-time C++ INFO lines (the
  oneDNN banner) are dropped; our own INFO lines (progress, results) and
  every library warning and error stay. `--verbosity=1` shows everything.

An entry point calls `import_tensorflow_quietly()` before its first import
that loads TensorFlow and ends with `cli.run(main)`.
"""

import contextlib
import logging as std_logging
import os
import re
import sys
import tempfile
import threading
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from mobilenet_jax import config_check

USAGE_ERROR = 2  # exit status of a user's mistake
INTERRUPTED = 130  # exit status of a Ctrl-C that stops a command (128 + 2)
OUR_CODE = os.path.dirname(os.path.abspath(__file__))
# orbax warns on every resume of a checkpoint saved without its metadata
# file and twice on every read-only manager (evaluate, export); neither is
# wrong.
HARMLESS_WARNINGS = ('Metadata file does not exist',
                     'Given directory is read only',
                     'CheckpointManagerOptions.read_only=True')
# How ml_collections reports an exception of a config file's get_config.
CONFIG_FILE_ERROR = 'Error whilst parsing config file'
# What C++ absl logging prints before its first line.
ABSL_PRE_INIT_WARNING = 'WARNING: All log messages before absl::InitializeLog'


def _verbosity_in_argv(argv) -> int:
  """--verbosity / -v from the raw command line, before absl parses it."""
  for i, arg in enumerate(argv):
    for name in ('--verbosity', '-v'):
      if arg.startswith(name + '='):
        value = arg[len(name) + 1:]
      elif arg == name and i + 1 < len(argv):
        value = argv[i + 1]
      else:
        continue
      return int(value) if value.lstrip('-').isdigit() else 0
  return 0


@contextlib.contextmanager
def native_stderr_without(noise: Callable[[str], bool]):
  """Holds file descriptor 2 while the block runs (C++ libraries write
  there, past Python's logging) and then passes on every line that `noise`
  does not match. Passes everything through at --verbosity >= 1."""
  if _verbosity_in_argv(sys.argv) >= 1:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode(errors='replace').splitlines(True):
        if not noise(line):
          sys.stderr.write(line)


def _tensorflow_import_noise(line: str) -> bool:
  return bool(re.match(r'I\d{4} ', line) or
              line.startswith(ABSL_PRE_INIT_WARNING))


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow without its import-time C++ INFO lines (TF 2.21's
  two libraries each print the oneDNN banner, whatever TF_CPP_MIN_LOG_LEVEL
  says). Does nothing where TensorFlow is loaded. An entry point calls it
  before its first import that loads TensorFlow."""
  if 'tensorflow' in sys.modules:
    return
  with native_stderr_without(_tensorflow_import_noise):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import


def usage_error(message: str):
  """Exits with one line on stderr and status 2."""
  sys.stderr.write(f'error: {" ".join(str(message).split())}\n')
  sys.exit(USAGE_ERROR)


def _keep_record(record: std_logging.LogRecord) -> bool:
  """At the default verbosity: our own lines, and the libraries' warnings
  and errors except HARMLESS_WARNINGS; without tracebacks: a failed
  background save logs the same error with a traceback from each of
  orbax's threads, `checkpoint.CheckpointWriteError` says it in one line."""
  if record.pathname.startswith(OUR_CODE):
    return True
  if record.levelno <= std_logging.INFO:
    return False
  record.exc_info = record.exc_text = None
  return not (record.levelno == std_logging.WARNING and
              str(record.msg).startswith(HARMLESS_WARNINGS))


def quiet_libraries(verbosity: int) -> None:
  """Drops library INFO logs below `verbosity` 1 (module docstring); every
  Python logger ends in absl's handler."""
  if verbosity < 1:
    logging.get_absl_handler().addFilter(_keep_record)


def _one_line_unless_ours(args, default_hook):
  """threading.excepthook / sys.unraisablehook: a failed checkpoint save
  fails in each of orbax's and tensorstore's threads and tasks (a traceback
  per array) and is reported once, as `checkpoint.CheckpointWriteError`;
  an exception raised in library code alone is one line. One that passed
  through our code keeps its traceback."""
  frames = traceback.extract_tb(args.exc_traceback)
  if any(frame.filename.startswith(OUR_CODE) for frame in frames):
    default_hook(args)
    return
  message = (str(args.exc_value).strip().splitlines() or [''])[0][:300]
  sys.stderr.write(f'error in the background: {args.exc_type.__name__}: '
                   f'{message}\n')


def parse_flags(argv):
  """absl's flag parsing, with a flag's or a config file's error (a missing
  file, a mistyped key: ml_collections' "Did you mean") as one line and
  status 2 instead of a usage text or a traceback."""
  try:
    argv = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS.config is not None:
      flags.FLAGS.config.to_dict()  # a file that failed to load raises here
    return argv
  except flags.Error as e:
    message = str(e)
    if CONFIG_FILE_ERROR in message:  # ml_collections adds the traceback
      flag = message.split(f': {CONFIG_FILE_ERROR}')[0]
      last = re.sub(r'^[\w.]*(Error|Exception): ', '',
                    message.rstrip().splitlines()[-1])
      message = f'{flag}: {last}'
    usage_error(message)
  except OSError as e:
    usage_error(f'--config: {str(e).splitlines()[-1].strip()}')
  except config_check.ConfigError as e:
    usage_error(f'--config: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    suggestion = re.search(r'Did you mean "(.+?)" instead of "(.+?)"', str(e))
    if suggestion:
      usage_error(f'--config: no field "{suggestion[2]}"; did you mean '
                  f'"{suggestion[1]}"?')
    if isinstance(e, (AttributeError, KeyError)):
      usage_error(f'--config: no field "{str(e).strip(chr(34) + chr(39))}"')
    usage_error(f'--config: {e}')


def run(main) -> None:
  """`app.run(main)` with the error policy and log quieting above."""

  def guarded_main(argv):
    quiet_libraries(flags.FLAGS.verbosity)
    # orbax's asyncio tasks log a failed save's traceback again when they
    # are collected; the failure is reported once (see below).
    std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
    threading.excepthook = lambda args: _one_line_unless_ours(
        args, threading.__excepthook__)
    sys.unraisablehook = lambda args: _one_line_unless_ours(
        args, sys.__unraisablehook__)
    try:
      return main(argv)
    except (config_check.ConfigError, app.UsageError) as e:
      usage_error(e)
    except KeyboardInterrupt as e:  # a second Ctrl-C: what it did, no trace
      sys.stderr.write(f'interrupted: {e or "Ctrl-C"}\n')
      sys.exit(INTERRUPTED)

  app.run(guarded_main, flags_parser=parse_flags)
