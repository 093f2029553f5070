"""malloc tunables: huge pages, freed blocks kept, one restart, the user's
say."""

import json
import os
import subprocess
import sys

import pytest

from mobilenet_jax import host_memory
from mobilenet_jax import xla_options

from conftest import REPO, run_module

# Mallocs and touches 256 MiB (over glibc's mmap threshold), frees it, does
# it again, and prints the minor page faults each round cost, with the
# tunables in use. (Not numpy: it asks for huge pages itself.)
_FAULTS = r"""
import ctypes, json, os, resource, sys
sys.path.insert(0, {repo!r})
from mobilenet_jax import host_memory
host_memory.restart_with_malloc_tunables()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 2**28
faults = []
for _ in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buffer = libc.malloc(size)
  ctypes.memset(buffer, 1, size)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  libc.free(buffer)
print(json.dumps({{'faults': faults,
                  'tunables': os.environ.get('GLIBC_TUNABLES', '')}}))
"""
ALL_TUNABLES = ':'.join([host_memory.HUGE_PAGES,
                         *host_memory.KEEP_FREED_BLOCKS])
# The user's own values for all three: 4 KiB pages, blocks mmapped and
# unmapped (glibc's defaults).
DECLINED = ('glibc.malloc.hugetlb=0:glibc.malloc.mmap_max=65536:'
            'glibc.malloc.trim_threshold=131072')


def _run_faults_script(env):
  result = subprocess.run(
      [sys.executable, '-c', _FAULTS.format(repo=REPO)], env=env,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


def _without_tunables():
  return {k: v for k, v in os.environ.items() if k != host_memory.TUNABLES}


needs_restart = pytest.mark.skipif(
    host_memory.tunables_to_add(_without_tunables()) != ALL_TUNABLES.split(':'),
    reason='glibc < 2.35 or the kernel THP mode is not madvise')


@needs_restart
def test_restart_sets_the_tunables_once_and_keeps_freed_blocks():
  restarted = _run_faults_script(_without_tunables())
  assert restarted['tunables'] == ALL_TUNABLES  # added once
  declined = _run_faults_script(
      {**_without_tunables(), host_memory.TUNABLES: DECLINED})
  assert declined['tunables'] == DECLINED
  # 256 MiB: 65536 faults of 4 KiB pages, in both rounds (a fresh mmap).
  assert min(declined['faults']) >= 2**16
  # 128 of 2 MiB pages (plus a few where the kernel had none at hand), then
  # none: the freed block stayed in the heap.
  first, second = restarted['faults']
  assert first < 2**16 / 20
  assert second < 16


def test_tunables_to_add_respects_settings_already_there():
  assert host_memory.tunables_to_add({host_memory.TUNABLES: (
      'glibc.malloc.arena_max=2:' + DECLINED)}) == []


@pytest.mark.slow
@needs_restart
def test_bench_command_runs_with_the_tunables():
  result = run_module(
      'mobilenet_jax.bench', '--model=mobilenet_v1', '--alpha=0.25',
      '--resolution=32', '--batch_size=2', '--mode=infer', '--steps=5',
      '--warmup=0', '--json', env=_without_tunables())
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  assert report['glibc_tunables'] == ALL_TUNABLES
  assert report['cpu_async_dispatch'] is False
  assert report['compiler_options'] == xla_options.CPU_OPTIONS


@pytest.mark.parametrize('platforms, expected', [
    ('cpu', True), ('CPU', True), ('cpu,tpu', True), ('tpu', False),
    ('cuda,cpu', False), ('gpu', False)])
def test_runs_on_cpu_follows_jax_platforms(platforms, expected):
  assert host_memory.runs_on_cpu({'JAX_PLATFORMS': platforms}) is expected


def test_runs_on_cpu_without_jax_platforms_looks_for_accelerator_modules(
    monkeypatch):
  installed = set()
  monkeypatch.setattr(host_memory.importlib.util, 'find_spec',
                      lambda name: name if name in installed else None)
  assert host_memory.runs_on_cpu({})
  for module in host_memory.ACCELERATOR_MODULES:
    installed = {module}
    assert not host_memory.runs_on_cpu({}), module


def test_nothing_is_restarted_or_changed_off_the_cpu_backend():
  """On a TPU or GPU host (here: JAX_PLATFORMS names one; the process never
  starts a backend) the entry point neither re-executes nor sets JAX's CPU
  dispatch option."""
  script = (
      'import os, sys, jax\n'
      f'sys.path.insert(0, {REPO!r})\n'
      'from mobilenet_jax import host_memory\n'
      'os.execv = lambda *a: sys.exit("re-executed")\n'
      'host_memory.keep_step_buffers_mapped()\n'
      "print(jax.config.values['jax_cpu_enable_async_dispatch'], "
      "os.environ.get('GLIBC_TUNABLES', ''))\n")
  result = subprocess.run(
      [sys.executable, '-c', script], capture_output=True, text=True,
      timeout=120, env={**_without_tunables(), 'JAX_PLATFORMS': 'tpu'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['True']
