"""The pool of TPU VMs: chips, chip groups, the scheduler against a fake
cloud and clock, the worker's lease and heartbeat, and whole sweeps of
real tiny trainings on VMs simulated by a fake `gcloud` (fake_gcloud.py)."""

import json
import os
import subprocess
import sys
import time

import pytest

import fake_gcloud
from conftest import REPO
from mobilenet_jax import parallel
from mobilenet_jax import sweep
from mobilenet_jax import sweep_pool
from mobilenet_jax import sweep_runs


# Chips and chip groups.


@pytest.mark.parametrize('accelerator_type, chips, hosts', [
    # Cloud TPU system architecture: v5e and v6e names count chips (8 per
    # host at most), v2-v5p names count TensorCores (2 per chip, 4 chips
    # per host).
    ('v5litepod-1', 1, 1), ('v5litepod-4', 4, 1), ('v5litepod-8', 8, 1),
    ('v5litepod-16', 16, 2), ('v6e-8', 8, 1), ('v2-8', 4, 1), ('v3-8', 4, 1),
    ('v4-8', 4, 1), ('v4-16', 8, 2), ('v4-32', 16, 4), ('v5p-8', 4, 1),
])
def test_chips_and_hosts_from_the_accelerator_type(accelerator_type, chips,
                                                    hosts):
  assert sweep_pool.vm_shape(accelerator_type) == sweep_pool.VmShape(chips,
                                                                     hosts)


def test_an_unknown_accelerator_type_is_a_value_error():
  with pytest.raises(ValueError, match='v9x-8'):
    sweep_pool.vm_shape('v9x-8')


def test_chip_groups_split_a_vm_into_disjoint_pinned_processes():
  shape = sweep_pool.vm_shape('v5litepod-8')
  assert sweep_pool.chip_groups(shape, None) == [None]
  assert sweep_pool.chip_groups(shape, 8) == [None]  # the whole VM
  groups = sweep_pool.chip_groups(shape, 2)
  assert groups == [(0, 1), (2, 3), (4, 5), (6, 7)]
  envs = [sweep_pool.pinned_env(chips, i) for i, chips in enumerate(groups)]
  assert [e['TPU_VISIBLE_CHIPS'] for e in envs] == ['0,1', '2,3', '4,5',
                                                    '6,7']
  ports = [int(e[k]) for e in envs for k in ('TPU_PROCESS_PORT',
                                             'TPU_MESH_CONTROLLER_PORT')]
  assert len(set(ports)) == len(ports)
  assert all(e['TPU_PROCESS_BOUNDS'] == '1,1,1' and
             e['TPU_CHIPS_PER_PROCESS_BOUNDS'] == '1,2,1' for e in envs)
  one_chip = sweep_pool.chip_groups(shape, 1)
  assert [sweep_pool.pinned_env(c, 0)['TPU_CHIPS_PER_PROCESS_BOUNDS']
          for c in one_chip[:1]] == ['1,1,1']
  for k, message in ((3, 'does not divide the 8 chips'),
                     (16, 'does not divide')):
    with pytest.raises(ValueError, match=message):
      sweep_pool.chip_groups(shape, k)
  with pytest.raises(ValueError, match='2 hosts'):
    sweep_pool.chip_groups(sweep_pool.vm_shape('v4-16'), 4)


def test_a_pinned_process_starts_no_distributed_runtime():
  """On a TPU VM training starts jax.distributed (whose coordinator port
  two processes would share); a chip group's process starts none."""
  machine = dict(libtpu=True, tpu_chips=8, gce=True)
  alone = parallel.plan_startup(parallel.Machine(env={}, **machine))
  assert alone.initialize
  pinned = parallel.plan_startup(parallel.Machine(
      env=sweep_pool.pinned_env((2, 3), 1), **machine))
  assert not pinned.initialize


# Subsets.


def test_runs_and_shards_select_exactly_the_named_runs():
  names = ['a', 'b', 'c', 'd', 'e']
  assert sweep.select_runs(names) == [0, 1, 2, 3, 4]
  assert sweep.select_runs(names, 'c,a') == [2, 0]
  assert sweep.select_runs(names, '4,b') == [4, 1]
  assert sweep.select_runs(names, shard='1/2') == [1, 3]
  assert sweep.select_runs(names, 'a,b,c', '0/2') == [0, 2]
  for runs, shard, message in (('z', None, "'z'"), ('5', None, "'5'"),
                               (None, '2/2', 'i/n'), (None, 'x', 'i/n')):
    with pytest.raises(ValueError, match=message):
      sweep.select_runs(names, runs, shard)


@pytest.mark.multiprocess
def test_dry_run_of_a_subset_prints_only_its_runs(tmp_path):
  sweep_file = tmp_path / 'sweep.py'
  sweep_file.write_text('TPUS = ["vm-a", "vm-b"]\nZONE = "z"\n\n'
                        'def get_sweep(h):\n'
                        '  return h.sweep("model.alpha", [0.25, 0.5, 0.75, '
                        '1.0])\n')
  def dry(*flags):
    out = subprocess.run(
        [sys.executable, '-m', 'mobilenet_jax.sweep', 'run',
         '--config=configs/default.py', f'--sweep={sweep_file}',
         '--workdir=gs://b/s', '--launcher=tpu_vm', '--dry_run',
         '--data_dir=gs://b/tfds', *flags],
        cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [line.split('--workdir=gs://b/s/')[1].split()[0]
            for line in out.stdout.splitlines()]
  assert dry('--runs=alpha_1.0,0') == ['alpha_1.0', 'alpha_0.25']
  assert dry('--shard=1/2') == ['alpha_0.5', 'alpha_1.0']
  assert dry() == ['alpha_0.25', 'alpha_0.5', 'alpha_0.75', 'alpha_1.0']


# The scheduler, against a fake cloud and a fake clock.


class FakeCloud:
  """VM states a test sets, and the launches and stops the pool asked for."""

  def __init__(self, vms):
    self.vms = dict(vms)  # name -> (state, accelerator type)
    self.launches, self.stops = [], []

  def describe(self, name):
    state, accelerator = self.vms.get(name, ('MISSING', None))
    return sweep_pool.Vm(name, state, accelerator)

  def launch(self, slot, name, epoch):
    self.launches.append((name, slot.vm, slot.chips, epoch))
    return 0, ''

  def stop(self, vm, name):
    self.stops.append((vm, name))


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def make_records(workdir, names):
  records = {}
  for i, name in enumerate(names):
    record = dict(index=i, name=name, status='pending', error=None,
                  config={'batch_size': 8})
    sweep_runs.write_json(workdir / name / sweep_runs.RUN_FILE, record)
    records[name] = record
  return records


def finish(workdir, name, steps=10, epoch=1, exited=True):
  """A run's final evaluation, and its worker's exit (unless not
  `exited`)."""
  if exited:
    beat(workdir, name, epoch, 1, returncode=0)
  (workdir / name / 'eval').mkdir(parents=True, exist_ok=True)
  (workdir / name / 'config.json').write_text(
      json.dumps({'num_train_steps': steps}))
  (workdir / name / 'eval' / f'step_{steps}.json').write_text(
      json.dumps({'top1': 0.5}))


def beat(workdir, name, epoch, beats, returncode=None, tail=''):
  record = dict(epoch=epoch, vm='x', host='h', beats=beats)
  if returncode is not None:
    record.update(returncode=returncode, tail=tail)
  sweep_runs.write_json(sweep_pool.heartbeat_path(workdir / name, epoch, 'h'),
                        record)


def make_pool(tmp_path, cloud, names, **kwargs):
  clock = Clock()
  records = make_records(tmp_path, names)
  pool = sweep_pool.Pool(str(tmp_path), records, list(cloud.vms),
                         cloud.describe, cloud.launch, cloud.stop, clock=clock,
                         log=lambda line: None, **kwargs)
  pool.look_at_vms()
  return pool, clock, records


def test_the_queue_fills_every_free_slot_and_refills_as_runs_end(tmp_path):
  cloud = FakeCloud({'a': ('READY', 'v5litepod-4'), 'b': ('READY', 'v4-8'),
                     'c': ('READY', 'v5litepod-1')})
  pool, _, records = make_pool(tmp_path, cloud, ['r0', 'r1', 'r2', 'r3', 'r4',
                                                 'r5'], chips_per_run=2)
  assert pool.slots['c'] == []  # 1 chip: no group of 2, never used
  pool.step()  # 2 groups of 2 chips on each VM
  assert cloud.launches == [('r0', 'a', (0, 1), 1), ('r1', 'a', (2, 3), 1),
                            ('r2', 'b', (0, 1), 1), ('r3', 'b', (2, 3), 1)]
  assert sweep_pool.read_lease(tmp_path / 'r1') == dict(
      epoch=1, vm='a', group=1, chips=[2, 3], granted=1000.0)
  finish(tmp_path, 'r2', exited=False)
  pool.step()  # evaluated, but its training still holds the chips
  assert records['r2']['status'] == 'running' and len(cloud.launches) == 4
  finish(tmp_path, 'r2')
  pool.step()
  assert records['r2']['status'] == 'finished'
  assert cloud.launches[-1] == ('r4', 'b', (0, 1), 1)  # r2's chips
  for name in ('r0', 'r1', 'r3', 'r4'):
    finish(tmp_path, name)
  pool.step()
  assert cloud.launches[-1][:2] == ('r5', 'a')
  finish(tmp_path, 'r5')
  pool.step()
  assert {r['status'] for r in records.values()} == {'finished'}
  assert len(cloud.launches) == 6  # each run once
  on_disk = sweep_runs.read_json(tmp_path / 'r5' / sweep_runs.RUN_FILE)
  assert on_disk['attempts'][0]['outcome'] == 'finished'
  assert on_disk['attempts'][0]['chip_count'] == 2


def test_a_preempted_vm_loses_its_run_to_the_next_free_vm(tmp_path):
  cloud = FakeCloud({'a': ('READY', 'v5litepod-1'),
                     'b': ('READY', 'v5litepod-1')})
  pool, clock, records = make_pool(tmp_path, cloud, ['r0', 'r1'])
  pool.step()
  beat(tmp_path, 'r0', 1, 3)
  cloud.vms['a'] = ('PREEMPTED', 'v5litepod-1')
  clock.now += 10
  pool.step()  # r0 lost; b is busy with r1
  assert records['r0']['status'] == 'pending'
  assert records['r0']['attempts'][0]['outcome'] == 'lost'
  assert cloud.stops == []  # a preempted VM runs nothing: nothing to kill
  finish(tmp_path, 'r1')
  pool.step()
  assert cloud.launches[-1] == ('r0', 'b', None, 2)
  assert sweep_pool.read_lease(tmp_path / 'r0')['epoch'] == 2
  # A VM that comes back takes work again.
  cloud.vms['a'] = ('READY', 'v5litepod-1')
  pool.step()
  assert [s.vm for s in pool.free_slots()] == ['a']


def test_a_silent_run_is_killed_and_moved_and_retries_are_bounded(tmp_path):
  cloud = FakeCloud({'a': ('READY', 'v6e-1')})
  pool, clock, records = make_pool(tmp_path, cloud, ['r0'], retries=1,
                                   heartbeat_seconds=100, start_seconds=300)
  pool.step()
  clock.now += 250  # no beat yet: within the first-beat allowance
  pool.step()
  assert records['r0']['status'] == 'running'
  beat(tmp_path, 'r0', 1, 1)
  clock.now += 50
  pool.step()
  clock.now += 90
  beat(tmp_path, 'r0', 1, 2)  # a new beat: alive
  pool.step()
  clock.now += 101
  pool.step()  # no new beat for more than 100 s: lost, killed, relaunched
  assert cloud.stops == [('a', 'r0')]
  assert cloud.launches[-1] == ('r0', 'a', None, 2)
  beat(tmp_path, 'r0', 2, 1, returncode=-9)  # killed by a signal: lost again
  pool.step()
  assert records['r0']['status'] == 'failed'
  assert 'lost 2 times (--retries=1)' in records['r0']['error']
  assert len(cloud.launches) == 2


def test_without_chip_groups_a_vm_of_any_type_is_one_slot(tmp_path):
  cloud = FakeCloud({'a': ('READY', None), 'b': ('READY', 'v7x-99')})
  pool, _, records = make_pool(tmp_path, cloud, ['r0', 'r1'])
  pool.step()
  assert [launch[:3] for launch in cloud.launches] == [('r0', 'a', None),
                                                       ('r1', 'b', None)]
  assert records['r0']['attempts'][0]['chip_count'] == 0  # chips unknown


def test_a_run_that_fails_by_itself_is_not_retried(tmp_path):
  cloud = FakeCloud({'a': ('READY', 'v6e-1')})
  pool, _, records = make_pool(tmp_path, cloud, ['r0', 'r1'])
  pool.step()
  beat(tmp_path, 'r0', 1, 1, returncode=1,
       tail='step 5\nerror: loss is nan at step 6')
  pool.step()
  assert records['r0']['status'] == 'failed'
  assert records['r0']['error'] == 'error: loss is nan at step 6'
  assert 'loss is nan' in (tmp_path / 'r0' / 'error.txt').read_text()
  assert [launch[0] for launch in cloud.launches] == ['r0', 'r1']


def test_a_new_launcher_watches_the_runs_of_the_old_one(tmp_path):
  """Stopping `sweep run` stops no run; running it again adopts the runs
  still training instead of starting them a second time."""
  cloud = FakeCloud({'a': ('READY', 'v6e-1'), 'b': ('READY', 'v6e-1')})
  pool, _, records = make_pool(tmp_path, cloud, ['r0', 'r1', 'r2'])
  pool.step()
  assert len(cloud.launches) == 2
  records = {name: sweep_runs.read_json(tmp_path / name / 'run.json')
             for name in records}
  again = FakeCloud(cloud.vms)
  pool = sweep_pool.Pool(str(tmp_path), records, ['a', 'b'], again.describe,
                         again.launch, again.stop, clock=Clock(),
                         log=lambda line: None)
  pool.look_at_vms()
  pool.adopt()
  pool.step()
  assert again.launches == []  # both slots still busy with r0 and r1
  finish(tmp_path, 'r0')
  pool.step()
  assert again.launches == [('r2', 'a', None, 1)]


def test_status_shows_where_a_pool_run_trained_its_time_and_chip_hours(
    tmp_path, capsys):
  """Elapsed time and chip-hours add up the attempts: a lost one of 15 min
  on a whole 4-chip VM, a finished one of 30 min on 2 chips: 45 min and
  4 * 0.25 + 2 * 0.5 = 2 chip-hours."""
  run_dir = tmp_path / 'r'
  finish(tmp_path, 'r', steps=100)
  (run_dir / 'eval' / 'step_50.json').write_text(json.dumps({'top1': 0.25}))
  (run_dir / 'eval' / 'step_100.json').write_text(json.dumps({'top1': 0.875}))
  sweep_runs.write_json(run_dir / 'run.json', dict(
      index=0, name='r', status='finished', vm='vm-b', chips=[2, 3],
      attempts=[dict(epoch=1, vm='vm-a', chips=None, chip_count=4,
                     start=0.0, end=900.0, outcome='lost'),
                dict(epoch=2, vm='vm-b', chips=[2, 3], chip_count=2,
                     start=1000.0, end=2800.0, outcome='finished')]))
  sweep.print_status(str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  assert lines == ['r: finished on vm-b chips 2,3, top-1 87.5%; 45 min, '
                   '2.00 chip-h',
                   '1 runs: 1 finished, 0 running, 0 failed, 0 not started; '
                   '2.00 chip-hours']


# The worker.


@pytest.mark.multiprocess
def test_the_worker_trains_only_under_its_lease_and_records_the_end(tmp_path):
  run_dir = tmp_path / 'run'
  sweep_runs.write_json(run_dir / sweep_pool.LEASE_FILE, {'epoch': 2})
  env_file = tmp_path / 'env.json'
  command = [sys.executable, '-c',
             'import json, os, sys; json.dump(dict(os.environ), '
             f'open({str(env_file)!r}, "w")); sys.exit(3)']
  # A stale attempt (epoch 1) does not start.
  assert sweep_pool.worker(str(run_dir), 1, 'vm-a', command) == 0
  assert not env_file.exists()
  status = sweep_pool.worker(str(run_dir), 2, 'vm-a', command, chips=[2, 3],
                             group=1, host='h')
  assert status == 3
  seen = json.loads(env_file.read_text())
  assert seen['TPU_VISIBLE_CHIPS'] == '2,3'
  assert (seen['MOBILENET_JAX_VM'], seen['MOBILENET_JAX_CHIPS']) == ('vm-a',
                                                                     '2,3')
  record = json.loads((run_dir / 'heartbeat.2.h.json').read_text())
  assert record['returncode'] == 3
  assert record['env'] == sweep_pool.pinned_env([2, 3], 1)


@pytest.mark.multiprocess
def test_the_worker_kills_its_training_when_the_lease_moves_on(tmp_path):
  run_dir = tmp_path / 'run'
  sweep_runs.write_json(run_dir / sweep_pool.LEASE_FILE, {'epoch': 1})
  marker = tmp_path / 'started'
  command = [sys.executable, '-c',
             f'import time; open({str(marker)!r}, "w").close(); '
             'time.sleep(60)']
  process = subprocess.Popen(
      [sys.executable, '-m', 'mobilenet_jax.sweep_pool', 'worker',
       str(run_dir), '--epoch=1', '--vm=vm-a', '--beat_seconds=0.2', '--',
       *command], cwd=REPO)
  deadline = time.time() + 60
  while not marker.exists():
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.1)
  sweep_runs.write_json(run_dir / sweep_pool.LEASE_FILE, {'epoch': 2})
  assert process.wait(timeout=30) != 0
  record = next(iter(run_dir.glob('heartbeat.1.*.json')))
  record = json.loads(record.read_text())
  assert record['superseded']
  with pytest.raises(ProcessLookupError):  # the training is gone
    os.kill(record['pid'], 0)


# Whole sweeps of real tiny trainings on fake TPU VMs.

TINY = [
    '--config.data.dataset=shapes/tiny', '--config.data.base_resolution=32',
    '--config.batch_size=8', '--config.optim.warmup_steps=0',
    '--config.model.dropout_rate=0.0', '--config.model.ops=reference',
    '--config.model.alpha=0.25',
]


@pytest.fixture
def fake_cloud(tmp_path, monkeypatch):
  """A fake gcloud on PATH and VMs under its root: empty homes, no
  repository (they run the code the sweep ships)."""
  bin_dir, root = fake_gcloud.install(tmp_path)
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}',
         fake_gcloud.ROOT_VAR: root, 'JAX_PLATFORMS': 'cpu'}

  def add_vm(name, accelerator_type):
    fake_gcloud.make_vm(root, name, accelerator_type)

  yield root, env, add_vm
  for name in os.listdir(root):  # nothing outlives the test
    fake_gcloud.preempt(root, name)


def write_sweep(tmp_path, body):
  path = tmp_path / 'sweep_file.py'
  path.write_text('def get_sweep(h):\n  return ' + body + '\n')
  return str(path)


def sweep_command(sweep_file, workdir, data_dir, *flags):
  return [sys.executable, '-m', 'mobilenet_jax.sweep', 'run',
          '--config=configs/default.py', f'--sweep={sweep_file}',
          f'--workdir={workdir}', f'--data_dir={data_dir}',
          '--launcher=tpu_vm', '--zone=z', '--allow_local_workdir',
          f'--remote_python={sys.executable}', '--poll_seconds=0.3', *TINY,
          *flags]


def attempts(workdir, name):
  return json.loads((workdir / name / 'run.json').read_text())['attempts']


def launches(root, vm):
  path = os.path.join(root, vm, 'ssh.log')
  if not os.path.exists(path):
    return []
  return [line for line in open(path).read().splitlines()
          if 'sweep_pool worker' in line]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_vms_train_five_runs_at_once_with_packed_chips(
    tmp_path, data_dir, fake_cloud):
  """2 VMs of 4 chips, 2 chips per run: 4 trainings at once, each pinned
  to its own chips and ports; `sweep status` from another process while
  they train; every run finished once, in less wall time than one after
  another."""
  root, env, add_vm = fake_cloud
  add_vm('vm-a', 'v5litepod-4')
  add_vm('vm-b', 'v4-8')
  workdir = tmp_path / 'sweep'
  sweep_file = write_sweep(tmp_path, 'h.sweep("seed", [0, 1, 2, 3, 4])')
  start = time.time()
  process = subprocess.Popen(
      sweep_command(sweep_file, workdir, data_dir, '--tpu=vm-a,vm-b',
                    '--chips_per_run=2', '--config.num_train_steps=6',
                    '--config.log_every_steps=2'),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  status = None
  while process.poll() is None:  # status from a second process
    out = subprocess.run([sys.executable, '-m', 'mobilenet_jax.sweep',
                          'status', str(workdir)], cwd=REPO,
                         capture_output=True, text=True)
    if 'running on vm-' in out.stdout and 'step ' in out.stdout:
      status = out.stdout
      break
    time.sleep(0.5)
  output, _ = process.communicate(timeout=600)
  wall = time.time() - start
  assert process.returncode == 0, output
  assert status is not None, output
  assert '5 runs: ' in status and 'chip-h' in status
  names = [f'seed_{i}' for i in range(5)]
  spans, envs = [], {}
  for name in names:
    (attempt,) = attempts(workdir, name)  # each run trained once
    assert attempt['outcome'] == 'finished' and attempt['chip_count'] == 2
    spans.append((attempt['start'], attempt['end'], attempt['vm']))
    (beat_file,) = (workdir / name).glob('heartbeat.*.json')
    envs[name] = json.loads(beat_file.read_text())
    assert sweep_runs.is_finished(workdir / name)
  assert sum(len(launches(root, vm)) for vm in ('vm-a', 'vm-b')) == 5
  # Both VMs busy at once: two runs on different VMs overlap in time.
  assert any(s1 < e2 and s2 < e1 and v1 != v2
             for s1, e1, v1 in spans for s2, e2, v2 in spans)
  assert wall < 0.8 * sum(end - begin for begin, end, _ in spans)
  # The runs that overlapped on one VM had disjoint chips and ports.
  for a in names:
    for b in names:
      ea, eb = envs[a], envs[b]
      together = (a < b and ea['vm'] == eb['vm'] and
                  ea['started'] < eb.get('ended', 1e18) and
                  eb['started'] < ea.get('ended', 1e18))
      if together:
        assert not (set(ea['chips']) & set(eb['chips']))
        ports = {ea['env']['TPU_PROCESS_PORT'],
                 ea['env']['TPU_MESH_CONTROLLER_PORT'],
                 eb['env']['TPU_PROCESS_PORT'],
                 eb['env']['TPU_MESH_CONTROLLER_PORT']}
        assert len(ports) == 4
  assert all(e['env']['TPU_VISIBLE_CHIPS'] in ('0,1', '2,3')
             for e in envs.values())
  for name in names:  # the training itself saw its VM and chips
    provenance = json.loads((workdir / name / 'provenance.json').read_text())
    assert (provenance['vm'], provenance['chips']) == (
        envs[name]['vm'], envs[name]['env']['TPU_VISIBLE_CHIPS'])
    (archive,) = (workdir / 'code').iterdir()  # one shipped tree
    assert archive.name == f'{provenance["code_hash"]}.tar.gz'
    assert len(provenance['git_commit']) == 40
  lines = subprocess.run([sys.executable, '-m', 'mobilenet_jax.sweep',
                          'status', str(workdir)], cwd=REPO,
                         capture_output=True, text=True).stdout.splitlines()
  assert lines[-1].startswith('5 runs: 5 finished, 0 running')


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_preempted_run_resumes_on_the_other_vm_as_if_never_stopped(
    tmp_path, data_dir, fake_cloud):
  """Two runs that train the same model (they differ in how often they
  save): the one on vm-a is preempted after a checkpoint, resumes from it
  on vm-b and ends with the final evaluation of the uninterrupted one."""
  root, env, add_vm = fake_cloud
  add_vm('vm-a', 'v5litepod-1')
  add_vm('vm-b', 'v5litepod-1')
  workdir = tmp_path / 'sweep'
  sweep_file = write_sweep(tmp_path,
                           'h.sweep("checkpoint_every_steps", [5, 8])')
  process = subprocess.Popen(
      sweep_command(sweep_file, workdir, data_dir, '--tpu=vm-a,vm-b',
                    '--config.num_train_steps=40',
                    '--config.log_every_steps=5'),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  preempted = workdir / 'checkpoint_every_steps_5'
  deadline = time.time() + 300
  while not (preempted / 'checkpoints' / '10').exists():
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.1)
  killed = fake_gcloud.preempt(root, 'vm-a')
  assert killed
  saved = max(int(p.name) for p in (preempted / 'checkpoints').iterdir()
              if p.name.isdigit())
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 0, output
  first, second = attempts(workdir, 'checkpoint_every_steps_5')
  assert (first['vm'], first['outcome']) == ('vm-a', 'lost')
  assert (second['vm'], second['outcome']) == ('vm-b', 'finished')
  assert first['end'] <= second['start']  # never two trainings at once
  assert len(launches(root, 'vm-a')) == 1 and len(launches(root, 'vm-b')) == 2
  (other,) = attempts(workdir, 'checkpoint_every_steps_8')
  assert other['vm'] == 'vm-b'
  # Resumed, not restarted: the steps up to the checkpoint trained once.
  steps = [r['step'] for r in sweep_runs.metrics_records(preempted)
           if r.get('split') == 'train']
  assert saved >= 10 and steps.count(5) == 1 and steps.count(40) == 1
  provenance = json.loads((preempted / 'provenance.json').read_text())
  assert provenance['vm'] == 'vm-b'
  assert [s['vm'] for s in provenance['earlier_starts']] == ['vm-a']
  final = json.loads((preempted / 'eval' / 'step_40.json').read_text())
  straight = json.loads((workdir / 'checkpoint_every_steps_8' / 'eval' /
                         'step_40.json').read_text())
  assert final['top1'] == straight['top1']
  assert final['loss'] == pytest.approx(straight['loss'], rel=1e-5)


@pytest.mark.multiprocess
def test_a_chip_group_that_does_not_fit_is_refused_in_one_line(
    tmp_path, fake_cloud):
  _, env, add_vm = fake_cloud
  add_vm('vm-a', 'v5litepod-4')
  workdir = tmp_path / 'sweep'
  sweep_file = write_sweep(tmp_path, 'h.sweep("batch_size", [8, 6])')
  def run(*flags):
    return subprocess.run(
        [sys.executable, '-m', 'mobilenet_jax.sweep', 'run',
         '--config=configs/default.py', f'--sweep={sweep_file}',
         f'--workdir={workdir}', '--data_dir=/no/data', '--launcher=tpu_vm',
         '--zone=z', '--tpu=vm-a', '--allow_local_workdir', *flags],
        cwd=REPO, env=env, capture_output=True, text=True)
  for k, message in (('3', 'does not divide the 4 chips of vm-a'),
                     ('4', 'does not divide the global batch_size 6')):
    result = run(f'--chips_per_run={k}')
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith('error: --chips_per_run=') and message in line
    assert not workdir.exists()  # nothing written, nothing launched
