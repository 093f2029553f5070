"""Devices and data parallelism: one mesh axis `data` over every device.

The batch is split over `data` and the state replicated (jit with shardings,
not pmap). The same code runs on 1 CPU, fake CPU devices, a TPU VM and a
multi-host pod slice, where each process feeds its own slice of the batch.

Start-up (`initialize_distributed`): `plan_startup`, a pure function of
this machine's cheap facts (`Machine`: environment, libtpu, TPU chips on
the PCI bus, the GCE DMI product name; nothing from the network) and the
flags, decides whether and how to call `jax.distributed.initialize`; the
call then fails fast, in one line (`DistributedStartupError`), when more
processes were expected than started. With several processes,
`check_shared_workdir` refuses a workdir they do not share.
"""

import dataclasses
import glob
import importlib.util
import os
from typing import Mapping

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mobilenet_jax import config_check

DATA_AXIS = 'data'

# Environment variables set on Cloud TPU VMs (GCE) or TPU pods (GKE); JAX's
# own cluster detection (jax/_src/clusters/cloud_tpu_cluster.py) reads the
# worker lists, TPU_WORKER_ID and TPU_SKIP_MDS_QUERY.
TPU_ENV_VARS = ('TPU_ACCELERATOR_TYPE', 'TPU_WORKER_ID',
                'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
                'TPU_SKIP_MDS_QUERY')
# The worker lists JAX's GKE detection reads, in its order.
WORKER_LIST_VARS = ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES')
DMI_PRODUCT_NAME = '/sys/class/dmi/id/product_name'
GCE_PRODUCT_NAME = 'Google Compute Engine'


class DistributedStartupError(RuntimeError):
  """jax.distributed did not start the processes expected (one line)."""


@dataclasses.dataclass(frozen=True)
class Machine:
  """What start-up decisions read about this machine; all cheap, local.

  env: the environment variables. libtpu: libtpu importable (or
  TPU_LIBRARY_PATH set). tpu_chips: TPU chips on the PCI bus. gce: a
  Google Compute Engine VM (its DMI product name).
  """
  env: Mapping[str, str]
  libtpu: bool = False
  tpu_chips: int = 0
  gce: bool = False


def probe_machine() -> Machine:
  """This machine's `Machine`: reads the environment and /sys, no network."""
  env = dict(os.environ)
  libtpu = bool(env.get('TPU_LIBRARY_PATH')) or (
      importlib.util.find_spec('libtpu') is not None)
  try:  # the count JAX's own TPU start-up uses (PCI vendor and device ids)
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except Exception:  # pylint: disable=broad-except
    chips = len(glob.glob('/dev/accel*')) or len(glob.glob('/dev/vfio/[0-9]*'))
  try:
    with open(DMI_PRODUCT_NAME) as f:
      gce = f.read().strip() == GCE_PRODUCT_NAME
  except OSError:
    gce = False
  return Machine(env=env, libtpu=libtpu, tpu_chips=chips, gce=gce)


@dataclasses.dataclass(frozen=True)
class Startup:
  """What `initialize_distributed` does.

  initialize: call jax.distributed.initialize(**arguments) (no arguments:
  JAX detects the cluster). gloo: CPU collectives over gloo first.
  expected_processes: how many processes must then run (None: whatever
  JAX detects). reason: why, for logs and errors.
  """
  initialize: bool
  reason: str
  arguments: Mapping[str, object] = dataclasses.field(default_factory=dict)
  gloo: bool = False
  expected_processes: int | None = None


def _worker_list(env: Mapping[str, str]) -> tuple[str | None, list[str]]:
  for name in WORKER_LIST_VARS:
    if env.get(name) is not None:
      return name, [h for h in env[name].split(',') if h.strip()]
  return None, []


def on_cloud_tpu_vm(machine: Machine) -> bool:
  """A Cloud TPU VM (GCE) or TPU pod (GKE) whose TPUs this process uses:
  JAX's own test (libtpu installed and TPU chips present, or
  JAX_FORCE_TPU_INIT), on Google's cloud (the GCE product name or a TPU
  environment variable), and JAX_PLATFORMS, if set, naming tpu."""
  env = machine.env
  platforms = env.get('JAX_PLATFORMS', '')
  if platforms and 'tpu' not in platforms.split(','):
    return False
  tpu_runtime = ((machine.libtpu and machine.tpu_chips > 0)
                 or 'JAX_FORCE_TPU_INIT' in env)
  return tpu_runtime and (machine.gce or any(v in env for v in TPU_ENV_VARS))


def plan_startup(machine: Machine, coordinator_address: str | None = None,
                 num_processes: int | None = None,
                 process_id: int | None = None) -> Startup:
  """Whether and how to start jax.distributed: a pure function of
  `machine` and the flags; a ConfigError for flags that do not go together.

  - An explicit coordinator: initialize with the three values (all
    required), gloo for CPU collectives; that many processes expected.
  - A Cloud TPU VM: initialize() with no arguments (any of --num_processes /
    --process_id passed on) and let JAX detect the slice: from the
    metadata server on GCE, from TPU_WORKER_HOSTNAMES on GKE. A worker list
    of n > 1 hosts (or --num_processes=n) expects n processes. Skipped on a
    single host where JAX can detect nothing (TPU_SKIP_MDS_QUERY set, no
    worker list).
  - TPU_PROCESS_BOUNDS=1,1,1 (the runtime told this process it is the only
    one of its topology: a chip group of `sweep_pool`): nothing to start,
    so packed processes never race for one coordinator port.
  - Elsewhere: a worker list of n > 1 hosts still initializes (JAX's
    detection decides; n processes expected); --num_processes or
    --process_id without --coordinator_address is a ConfigError; else a
    single process, nothing to start.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise config_check.ConfigError(
          '--coordinator_address needs --num_processes and '
          '--process_id as well')
    return Startup(
        initialize=True, reason=f'--coordinator_address={coordinator_address}',
        arguments={'coordinator_address': coordinator_address,
                   'num_processes': num_processes, 'process_id': process_id},
        gloo=True, expected_processes=num_processes)
  given = {k: v for k, v in (('num_processes', num_processes),
                             ('process_id', process_id)) if v is not None}
  if machine.env.get('TPU_PROCESS_BOUNDS') == '1,1,1' and not given:
    return Startup(initialize=False, reason='one process on its own chips '
                   '(TPU_PROCESS_BOUNDS=1,1,1: a sweep pool\'s chip group)')
  list_name, hosts = _worker_list(machine.env)
  expected = max(len(hosts), num_processes or 0)
  expected = expected if expected > 1 else None
  if on_cloud_tpu_vm(machine):
    if (list_name is None and 'TPU_SKIP_MDS_QUERY' in machine.env
        and expected is None):
      return Startup(initialize=False, reason='a single TPU VM host without '
                     'a metadata server or worker list')
    source = (f'{list_name} ({len(hosts)} hosts)' if list_name
              else 'the GCE metadata server')
    return Startup(initialize=True, arguments=given,
                   reason=f'a Cloud TPU VM; JAX detects the slice from '
                   f'{source}', expected_processes=expected)
  if len(hosts) > 1:
    return Startup(initialize=True, arguments=given,
                   reason=f'{list_name} lists {len(hosts)} hosts',
                   expected_processes=expected)
  if given:
    raise config_check.ConfigError(
        f'--{next(iter(given))} needs --coordinator_address '
        '(outside a Cloud TPU VM, where JAX detects the rest)')
  return Startup(initialize=False, reason='a single process')


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           machine: Machine | None = None) -> Startup:
  """Starts jax.distributed before any other JAX call, as `plan_startup`
  decides for `machine` (default: `probe_machine()`); returns the plan.

  Raises ConfigError for flags that do not go together, and
  DistributedStartupError (one line) when jax.distributed.initialize fails
  or fewer (or more) processes run than expected.
  """
  plan = plan_startup(machine or probe_machine(), coordinator_address,
                      num_processes, process_id)
  if not plan.initialize:
    return plan
  if plan.gloo:
    # CPU processes need gloo for collectives; the setting only affects the
    # CPU backend, and asking for the backend here would initialise it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(**plan.arguments)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DistributedStartupError(
        f'jax.distributed.initialize() failed on {plan.reason}: '
        f'{first}') from None
  check_started(plan)
  return plan


def check_started(plan: Startup) -> None:
  """DistributedStartupError unless the processes `plan` expects run."""
  expected = plan.expected_processes
  if not expected or expected <= 1:
    return
  running = (jax.process_count() if jax.distributed.is_initialized()
             else None)
  if running != expected:
    found = ('no distributed client exists' if running is None
             else f'jax.process_count() is {running}')
    raise DistributedStartupError(
        f'expected {expected} processes ({plan.reason}) but {found}; start '
        'every worker with the same command (gcloud ... ssh --worker=all), '
        'or pass --coordinator_address, --num_processes and --process_id')


SHARED_MARKER_PREFIX = '.shared_workdir_check_'


def check_shared_workdir(workdir: str) -> None:
  """With several processes, a ConfigError unless all of them see `workdir`
  as one folder: process 0 writes a uniquely named marker file there, every
  process looks for it after a barrier, all learn what each saw, and
  process 0 removes it (and the workdir if it made it for the check)."""
  count = jax.process_count()
  if count == 1:
    return
  token = multihost_utils.broadcast_one_to_all(
      np.frombuffer(os.urandom(8), np.uint32))
  path = epath.Path(workdir)
  marker = path / f'{SHARED_MARKER_PREFIX}{bytes(np.asarray(token)).hex()}'
  first = jax.process_index() == 0
  created = False
  if first:
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text('written by process 0 to see that every process '
                      'shares the workdir\n')
  multihost_utils.sync_global_devices('shared workdir marker written')
  seen = np.asarray(multihost_utils.process_allgather(
      np.int32(marker.exists()))).reshape(-1)
  blind = [i for i, s in enumerate(seen) if not s]
  if first:
    marker.unlink(missing_ok=True)
    if blind and created and not any(path.iterdir()):
      path.rmdir()
  if blind:
    who = (f'process {blind[0]} does' if len(blind) == 1 else
           f'processes {", ".join(map(str, blind))} do')
    raise config_check.ConfigError(
        f'--workdir {workdir!r} is not shared between the {count} processes '
        f'({who} not see a file process 0 wrote there): it must be shared '
        'storage such as gs://')


def create_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, field: str = 'batch_size'):
  """Every device must get the same number of examples."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise config_check.ConfigError(
        f'{field} must be a positive multiple of the device count '
        f'({devices}), got {global_batch_size}')
  if global_batch_size % processes:
    raise config_check.ConfigError(
        f'{field} must be a multiple of the process count '
        f'({processes}), got {global_batch_size}')


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy arrays -> global jax.Arrays split over `data`."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)
