"""Devices and data parallelism: one mesh axis `data` over every device.

The batch is split over `data` and the state replicated (jit with shardings,
not pmap). The same code runs on 1 CPU, fake CPU devices, a TPU VM and a
multi-host pod slice, where each process feeds its own slice of the batch.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts jax.distributed before any other JAX call.

  With an explicit coordinator (the two-local-process test, or any cluster
  without auto-detection) the three values are required; without one, it is
  auto-detected on TPU VM pod slices and skipped on a single host.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('coordinator_address needs num_processes and '
                       'process_id as well')
    # CPU processes need gloo for collectives; the setting only affects the
    # CPU backend, and asking for the backend here would initialise it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _on_multihost_tpu():
    jax.distributed.initialize()


def _on_multihost_tpu() -> bool:
  """True on a TPU VM that is one worker of a multi-host slice."""
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


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
    raise ValueError(
        f'{field} must be a positive multiple of the device count '
        f'({devices}), got {global_batch_size}')
  if global_batch_size % processes:
    raise ValueError(f'{field} must be a multiple of the process count '
                     f'({processes}), got {global_batch_size}')


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy arrays -> global jax.Arrays split over `data`."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_batch)
