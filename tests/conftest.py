"""Test-wide settings: a persistent XLA compilation cache, so the many tiny
runs that build the same models (in this process and in subprocesses)
compile each program once."""

import os
import tempfile

os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), 'mobilenet_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
