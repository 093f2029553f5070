"""Huge pages for malloc: fewer page faults, one restart, the user's say."""

import json
import os
import subprocess
import sys

import pytest

from mobilenet_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Mallocs, touches and frees 256 MiB (glibc serves it with mmap) and prints
# the minor page faults that cost, with the tunables in use. (Not numpy: it
# asks for huge pages itself.)
_FAULTS = r"""
import ctypes, json, os, resource, sys
sys.path.insert(0, {repo!r})
from mobilenet_jax import host_memory
host_memory.restart_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 2**28
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = libc.malloc(size)
ctypes.memset(buffer, 1, size)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(buffer)
print(json.dumps({{'faults': faults,
                  'tunables': os.environ.get('GLIBC_TUNABLES', '')}}))
"""


def _run_faults_script(env):
  result = subprocess.run(
      [sys.executable, '-c', _FAULTS.format(repo=REPO)], env=env,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


def _without_tunables():
  return {k: v for k, v in os.environ.items() if k != host_memory.TUNABLES}


needs_restart = pytest.mark.skipif(
    not host_memory.huge_pages_need_restart(_without_tunables()),
    reason='glibc < 2.35 or the kernel THP mode is not madvise')


@needs_restart
def test_restart_sets_the_tunable_once_and_faults_huge_pages():
  restarted = _run_faults_script(_without_tunables())
  assert restarted['tunables'] == host_memory.HUGE_PAGES  # added once
  # The user's own setting is kept: with hugetlb=0, 4 KiB pages.
  declined = _run_faults_script(
      {**_without_tunables(), host_memory.TUNABLES: 'glibc.malloc.hugetlb=0'})
  assert declined['tunables'] == 'glibc.malloc.hugetlb=0'
  # 256 MiB: 65536 faults of 4 KiB pages; 128 of 2 MiB pages (plus a few
  # where the kernel had no huge page at hand).
  assert declined['faults'] >= 2**16
  assert restarted['faults'] < declined['faults'] / 20


def test_need_restart_respects_a_setting_already_there():
  assert not host_memory.huge_pages_need_restart(
      {host_memory.TUNABLES: 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0'})


@needs_restart
def test_bench_command_runs_with_huge_pages():
  result = subprocess.run(
      [sys.executable, '-m', 'mobilenet_jax.bench', '--model=mobilenet_v1',
       '--alpha=0.25', '--resolution=32', '--batch_size=2', '--mode=infer',
       '--steps=5', '--warmup=0', '--json'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**_without_tunables(), 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout)['glibc_tunables'] == host_memory.HUGE_PAGES
