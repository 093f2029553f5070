"""Keeping XLA:CPU's step buffers mapped (Linux, glibc malloc).

XLA:CPU allocates a step's buffers with malloc as the step runs and frees
them as it ends (for a MobileNetV2 1.0 / 224 px / batch 32 train step, one
2.6 GB temporary block). glibc serves a block over its mmap threshold (at
most 32 MiB) with a fresh mmap and returns it with munmap, so every step
page-faults its whole working set anew, 4 KiB at a time; on a VM whose host
reclaims freed memory, far more after any pause between steps. Three glibc
tunables (glibc >= 2.35 for the first) and one JAX setting fix it:

- `glibc.malloc.hugetlb=1`: malloc asks for transparent huge pages
  (madvise), which fault 2 MiB at a time. Only where the kernel's THP mode
  is `madvise` ('always' gives them unasked).
- `glibc.malloc.mmap_max=0` and a 1 TiB `glibc.malloc.trim_threshold`:
  large blocks come from the heap and stay there when freed, so the next
  step reuses the same pages without a fault.
- `jax_cpu_enable_async_dispatch=False` (`run_steps_on_calling_thread`):
  the step then runs, and allocates, on the calling (main) thread. glibc
  serves other threads from their own arenas, which take any block over
  64 MiB from mmap whatever `mmap_max` says.

glibc reads tunables once, at process start, so
`restart_with_malloc_tunables` re-executes the process with them set. The
entry points that run models call `keep_step_buffers_mapped` before their
other imports. All of this is for JAX's CPU backend only: where the run will
be on a TPU or GPU (`runs_on_cpu`), nothing is re-executed or changed.
docs/performance.md has the measurements.
"""

import importlib.util
import os
import sys

TUNABLES = 'GLIBC_TUNABLES'
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
KEEP_FREED_BLOCKS = ('glibc.malloc.mmap_max=0',
                     f'glibc.malloc.trim_threshold={2**40}')
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'
# Python modules that give JAX an accelerator backend: libtpu for TPUs, the
# `jax_plugins` namespace for PJRT plugins (jax-cuda*-plugin, ROCm, ...).
ACCELERATOR_MODULES = ('libtpu', 'jax_plugins')


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


def tunables_to_add(environ=os.environ) -> list[str]:
  """The tunables (see the module docstring) that GLIBC_TUNABLES in
  `environ` lacks: none on another C library or glibc < 2.35, HUGE_PAGES
  only where the kernel's THP mode is 'madvise'. A tunable already there,
  set by a restart or by the user, is respected, whatever its value."""
  if _glibc_version() < (2, 35):
    return []
  wanted = list(KEEP_FREED_BLOCKS)
  if _thp_mode() == 'madvise':
    wanted.insert(0, HUGE_PAGES)
  present = environ.get(TUNABLES, '')
  return [t for t in wanted if t.split('=')[0] + '=' not in present]


def runs_on_cpu(environ=os.environ) -> bool:
  """Whether JAX will run on its CPU backend, judged without starting any
  backend (an entry point decides before `jax.distributed.initialize`):
  JAX_PLATFORMS's first platform where it is set, else whether no
  accelerator backend is installed (`ACCELERATOR_MODULES`). A CPU run on a
  host with libtpu or a GPU plugin installed sets JAX_PLATFORMS=cpu to get
  the tunables."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  return not any(importlib.util.find_spec(module)
                 for module in ACCELERATOR_MODULES)


def restart_with_malloc_tunables() -> None:
  """Re-executes this process, same interpreter and arguments, with
  `tunables_to_add()` appended to GLIBC_TUNABLES; returns at once where
  there are none."""
  missing = tunables_to_add()
  if not missing:
    return
  os.environ[TUNABLES] = ':'.join(
      filter(None, [os.environ.get(TUNABLES), *missing]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run_steps_on_calling_thread() -> None:
  """Makes XLA:CPU run single-device computations on the calling thread
  (`jax_cpu_enable_async_dispatch=False`), so that their buffers come from
  glibc's main arena and stay mapped (module docstring). Call it before the
  first computation. Multi-device computations still dispatch
  asynchronously; other backends are unaffected."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_enable_async_dispatch', False)


def keep_step_buffers_mapped() -> None:
  """`restart_with_malloc_tunables`, then `run_steps_on_calling_thread`,
  where the run is on the CPU backend (`runs_on_cpu`): what an entry point
  calls first, before its other imports."""
  if not runs_on_cpu():
    return
  restart_with_malloc_tunables()
  run_steps_on_calling_thread()
