"""Multi-host start-up: the jax.distributed decisions on faked machines, the
fail-fast when processes are missing, and the shared-workdir check (the
shared case for real: tests/test_train.py's two local processes)."""

import os
import socket
import subprocess

import jax
from jax.experimental import multihost_utils
import numpy as np
import pytest

from mobilenet_jax import parallel

from conftest import REPO, main_command, tiny_overrides

Machine = parallel.Machine
# A TPU VM's local facts: libtpu installed, 4 chips on the PCI bus.
TPU = dict(libtpu=True, tpu_chips=4)
GCE_TPU_VM = Machine(env={}, gce=True, **TPU)  # TPU_* live in the metadata
GKE_HOSTS = 'w-0.svc,w-1.svc,w-2.svc,w-3.svc'
GKE_TPU_POD = Machine(env={'TPU_WORKER_HOSTNAMES': GKE_HOSTS,
                           'TPU_WORKER_ID': '2'}, gce=True, **TPU)


def plan(machine, *flags):
  return parallel.plan_startup(machine, *flags)


def test_gce_tpu_vm_initializes_without_arguments_single_or_multi_host():
  # One host or a slice look alike from the VM: JAX asks the metadata server.
  for machine in (GCE_TPU_VM,
                  Machine(env={'TPU_ACCELERATOR_TYPE': 'v4-16'}, gce=False,
                          **TPU)):
    startup = plan(machine)
    assert startup.initialize and not startup.gloo
    assert dict(startup.arguments) == {}
    assert startup.expected_processes is None
    assert 'metadata' in startup.reason
  # --num_processes on a slice: passed on, and then expected.
  startup = plan(GCE_TPU_VM, None, 4, None)
  assert startup.initialize and dict(startup.arguments) == {'num_processes': 4}
  assert startup.expected_processes == 4


def test_gke_worker_list_initializes_and_expects_every_host():
  startup = plan(GKE_TPU_POD)
  assert startup.initialize and dict(startup.arguments) == {}
  assert startup.expected_processes == 4
  assert 'TPU_WORKER_HOSTNAMES (4 hosts)' in startup.reason
  # JAX reads TPU_PROCESS_ADDRESSES first.
  startup = plan(Machine(env={'TPU_PROCESS_ADDRESSES': 'a:1,b:1',
                              'TPU_WORKER_HOSTNAMES': GKE_HOSTS}, **TPU))
  assert startup.expected_processes == 2
  # A one-host list: JAX detects a one-process cluster, nothing expected.
  startup = plan(Machine(env={'TPU_WORKER_HOSTNAMES': 'localhost'}, **TPU))
  assert startup.initialize and startup.expected_processes is None
  # A multi-host list where JAX cannot see a TPU VM still tries (and the
  # check after it fails fast).
  startup = plan(Machine(env={'TPU_WORKER_HOSTNAMES': GKE_HOSTS}))
  assert startup.initialize and startup.expected_processes == 4


def test_explicit_coordinator_uses_the_flags_and_gloo():
  for machine in (Machine(env={}), GCE_TPU_VM):
    startup = plan(machine, '127.0.0.1:1234', 2, 1)
    assert startup.initialize and startup.gloo
    assert dict(startup.arguments) == {'coordinator_address': '127.0.0.1:1234',
                                       'num_processes': 2, 'process_id': 1}
    assert startup.expected_processes == 2
  with pytest.raises(ValueError, match='needs --num_processes and '
                     '--process_id'):
    plan(Machine(env={}), '127.0.0.1:1234', 2, None)


def test_single_hosts_start_nothing():
  for machine in (
      Machine(env={}),  # a laptop, CI
      Machine(env={}, gce=True),  # a CPU VM on GCE
      Machine(env={}, libtpu=True, gce=True),  # libtpu for tpu_compile only
      Machine(env={'JAX_PLATFORMS': 'cpu'}, gce=True, **TPU),  # TPUs unused
      # JAX can detect nothing: no metadata server, no worker list.
      Machine(env={'TPU_SKIP_MDS_QUERY': '1'}, gce=True, **TPU)):
    assert not plan(machine).initialize, machine
  with pytest.raises(ValueError, match='--num_processes needs '
                     '--coordinator_address'):
    plan(Machine(env={}), None, 2, None)


def test_probe_machine_reads_this_machine():
  machine = parallel.probe_machine()
  assert machine.env == dict(os.environ)
  assert isinstance(machine.tpu_chips, int) and machine.tpu_chips >= 0


@pytest.fixture
def fake_jax_distributed(monkeypatch):
  """jax.distributed.initialize recorded, not run; returns the calls and a
  setter of what jax reports afterwards."""
  calls, after = [], {'initialized': True, 'count': 1, 'error': None}

  def initialize(**kwargs):
    calls.append(kwargs)
    if after['error']:
      raise after['error']

  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  monkeypatch.setattr(jax.distributed, 'is_initialized',
                      lambda: after['initialized'])
  monkeypatch.setattr(jax, 'process_count', lambda: after['count'])
  return calls, after


def test_initialize_calls_jax_as_planned(fake_jax_distributed):
  calls, after = fake_jax_distributed
  assert not parallel.initialize_distributed(machine=Machine(env={})).initialize
  assert calls == []
  parallel.initialize_distributed(machine=GCE_TPU_VM)
  assert calls == [{}]
  after['count'] = 4
  parallel.initialize_distributed(machine=GKE_TPU_POD)
  assert calls == [{}, {}]


@pytest.mark.parametrize('initialized, count, found', [
    (False, 1, 'no distributed client exists'),
    (True, 1, r'jax.process_count\(\) is 1'),
    (True, 2, r'jax.process_count\(\) is 2')])
def test_missing_processes_fail_fast_in_one_line(fake_jax_distributed,
                                                 initialized, count, found):
  _, after = fake_jax_distributed
  after.update(initialized=initialized, count=count)
  with pytest.raises(parallel.DistributedStartupError,
                     match=f'^expected 4 processes .*TPU_WORKER_HOSTNAMES.* '
                     f'but {found}') as error:
    parallel.initialize_distributed(machine=GKE_TPU_POD)
  assert '\n' not in str(error.value)
  # An explicit --num_processes=3 that starts some other number.
  with pytest.raises(parallel.DistributedStartupError,
                     match='^expected 3 processes'):
    parallel.initialize_distributed(None, 3, None, machine=GCE_TPU_VM)


def test_a_failing_initialize_is_one_line(fake_jax_distributed):
  _, after = fake_jax_distributed
  after['error'] = ValueError('coordinator_address should be defined.\nmore')
  with pytest.raises(parallel.DistributedStartupError) as error:
    parallel.initialize_distributed(machine=Machine(
        env={'TPU_WORKER_HOSTNAMES': GKE_HOSTS}))
  assert str(error.value) == (
      'jax.distributed.initialize() failed on TPU_WORKER_HOSTNAMES lists 4 '
      'hosts: coordinator_address should be defined.')


@pytest.fixture
def two_processes(monkeypatch):
  """This process as one of two (index set by the test); `others_see` is
  what the other process reports seeing of the marker."""
  view = {'index': 0, 'others_see': True}
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: view['index'])
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all', lambda x: x)
  monkeypatch.setattr(multihost_utils, 'sync_global_devices', lambda _: None)

  def allgather(seen):
    other = np.int32(view['others_see'])
    return np.array([seen, other] if view['index'] == 0 else [other, seen])

  monkeypatch.setattr(multihost_utils, 'process_allgather', allgather)
  return view


def test_a_shared_workdir_passes_and_keeps_no_marker(two_processes, tmp_path):
  parallel.check_shared_workdir(str(tmp_path / 'run'))
  assert os.listdir(tmp_path / 'run') == []


@pytest.mark.parametrize('index', [0, 1])
def test_an_unshared_workdir_is_refused_in_one_line(two_processes, tmp_path,
                                                     index):
  # Process 1 does not see the marker: as process 0, which wrote it on its
  # own disk, or as process 1, on whose disk nothing was written.
  two_processes.update(index=index, others_see=index == 1)
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError) as error:
    parallel.check_shared_workdir(str(workdir))
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'--workdir {str(workdir)!r} is not shared '
                            'between the 2 processes')
  assert message.endswith('it must be shared storage such as gs://')
  assert 'process 1 does not see' in message
  assert not workdir.exists()  # process 0 removed what it made for the check


def test_one_process_checks_nothing(tmp_path):
  parallel.check_shared_workdir(str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.multiprocess
def test_two_processes_with_their_own_workdirs_are_refused(tmp_path):
  # Two jax.distributed processes on this host, each given a folder of its
  # own: both stop before reading data or writing anything but the check.
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  overrides = tiny_overrides(str(tmp_path / 'tfds'))
  processes = [subprocess.Popen(
      main_command(overrides, tmp_path / f'w{i}',
                   f'--coordinator_address={address}', '--num_processes=2',
                   f'--process_id={i}'),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for i, p in enumerate(processes):
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last == (f"error: --workdir '{tmp_path / f'w{i}'}' is not shared "
                    'between the 2 processes (process 1 does not see a file '
                    'process 0 wrote there): it must be shared storage such '
                    'as gs://'), stderr[-3000:]
  assert not (tmp_path / 'w0').exists() and not (tmp_path / 'w1').exists()
  assert not (tmp_path / 'tfds').exists()
