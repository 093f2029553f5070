"""Transparent huge pages for XLA:CPU's step buffers (Linux, glibc malloc).

XLA:CPU allocates a step's buffers with malloc as the step runs and frees
them as it ends; glibc serves every buffer over its mmap threshold (at most
32 MiB) with a fresh mmap, so each step page-faults its whole working set
anew, 4 KiB at a time. A MobileNetV2 1.0 / 224 px / batch 32 train step on
CPU took 640k page faults (2.6 GB) per step, a third of its time in the
kernel. glibc's tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc
ask for transparent huge pages (madvise), which fault 2 MiB at a time: 1.6k
faults, and the step took 1.4-2.0 s instead of 2.2-2.7 (README, Speed).

glibc reads tunables once, at process start, so `restart_with_huge_pages`
re-executes the process with the tunable set. The entry points that run
models call it before their other imports.
"""

import os
import sys

TUNABLES = 'GLIBC_TUNABLES'
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, ...]:
  """(2, 36) for glibc 2.36; () for another C library or system."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return ()
  if name != 'glibc':
    return ()
  return tuple(int(part) for part in version.split('.'))


def _thp_mode() -> str:
  """The kernel's transparent huge page mode: 'always', 'madvise' or
  'never' (the bracketed word of THP_MODE); '' where there is none."""
  try:
    with open(THP_MODE) as f:
      text = f.read()
  except OSError:
    return ''
  return text[text.find('[') + 1:text.find(']')] if '[' in text else ''


def huge_pages_need_restart(environ=os.environ) -> bool:
  """Whether setting the tunable would change malloc: glibc >= 2.35, the
  kernel's THP mode 'madvise' ('always' gives huge pages unasked), and no
  `glibc.malloc.hugetlb` in GLIBC_TUNABLES yet (one already there, set by a
  restart or by the user, is respected)."""
  return (_glibc_version() >= (2, 35) and _thp_mode() == 'madvise'
          and 'glibc.malloc.hugetlb' not in environ.get(TUNABLES, ''))


def restart_with_huge_pages() -> None:
  """Re-executes this process, same interpreter and arguments, with
  HUGE_PAGES added to GLIBC_TUNABLES, where `huge_pages_need_restart`;
  otherwise returns at once."""
  if not huge_pages_need_restart():
    return
  os.environ[TUNABLES] = ':'.join(
      filter(None, [os.environ.get(TUNABLES), HUGE_PAGES]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
