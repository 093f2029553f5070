"""A sweep over a pool of TPU VMs: a queue of runs, chip groups, leases.

`sweep run --launcher=tpu_vm --tpu=a,b,c` hands each pending run to the next
free slot: a whole VM or, with `--chips_per_run=K`, a group of K of its
chips. Three pieces, each small:

- `Gcloud`: the only cloud calls, `gcloud compute tpus tpu-vm describe`
  (`--format=json`: `state`, `acceleratorType`) and `ssh --worker=all`.
- `Pool`: the scheduler, a loop over (describe every VM, look at every
  running run's files, hand out free slots), with the cloud, the clock and
  the sleep injected so a test can drive it with fakes.
- `worker`: what every host of a VM runs for one attempt of one run,
  detached: it pins the training to its chips, beats a heartbeat file in
  the run directory, obeys the run's lease, and records the exit.

The run directory (shared: gs://) holds the protocol between them:

  lease.json                  {"epoch": E, "vm": ..., "chips": [...]}:
                              written by the pool before each attempt;
                              only the attempt with that epoch may train
  heartbeat.<E>.<host>.json   the worker's beats (a counter), its pinned
                              environment, and at the end its exit status

A lost attempt (its VM not READY, no new beat for `heartbeat_seconds`, or
killed by a signal) goes back to the queue and resumes from its checkpoints
elsewhere; before that the pool raises the lease's epoch and, when the old
VM still answers, kills the attempt there over ssh, so that two trainings
of one run never live at once (docs/design.md, "A pool of TPU VMs").
"""

import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

from etils import epath

from mobilenet_jax import config_check
from mobilenet_jax import sweep_code
from mobilenet_jax import sweep_runs

READY = 'READY'
LEASE_FILE = 'lease.json'
HEARTBEAT_SECONDS = 600  # no new beat this long: the attempt is lost
START_SECONDS = 1800  # the first beat may take this long (worker set-up)
RETRIES = 3  # attempts lost to infrastructure, per run, before it fails
BASE_PORT = 8476  # the TPU runtime's default process port
# Exit statuses of `mobilenet_jax.main` that are the run's own failure
# (1: an error such as a NaN loss, 2: a flag or config error); anything
# else that ends without the final evaluation is the infrastructure's.
RUN_FAILURES = (1, 2)


# Chips.


@dataclasses.dataclass(frozen=True)
class VmShape:
  """A TPU VM's chips: `chips` in all, `hosts` hosts (workers)."""
  chips: int
  hosts: int


# acceleratorType prefix -> (TensorCores per chip in the name's count,
# chips per host): v5e and v6e names count chips, v2-v5p TensorCores
# (2 per chip); https://cloud.google.com/tpu/docs/system-architecture-tpu-vm
_GENERATIONS = {'v2': (2, 4), 'v3': (2, 4), 'v4': (2, 4), 'v5p': (2, 4),
                'v5litepod': (1, 8), 'v5e': (1, 8), 'v6e': (1, 8)}


def vm_shape(accelerator_type: str) -> VmShape:
  """'v5litepod-8' -> 8 chips, 1 host; 'v4-16' -> 8 chips, 2 hosts."""
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator_type)
  if not match or match[1] not in _GENERATIONS:
    raise config_check.ConfigError(
        f'unknown TPU acceleratorType {accelerator_type!r}; '
        f'known: {", ".join(f"{g}-N" for g in _GENERATIONS)}')
  per_chip, per_host = _GENERATIONS[match[1]]
  chips = max(1, int(match[2]) // per_chip)
  return VmShape(chips, -(-chips // per_host))


# A process's chips on one host: TPU_CHIPS_PER_PROCESS_BOUNDS for K chips
# (x, y, z), from the JAX maintainers' recipe for independent processes on
# one TPU VM (docs/design.md cites it).
_CHIP_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1', 8: '2,4,1'}


def chip_groups(shape: VmShape, chips_per_run: int | None,
                name: str = 'the VM') -> list[tuple[int, ...] | None]:
  """The slots of a VM: [None] (the whole VM, every host) without
  `chips_per_run`, else its chips split into groups of K (single-host VMs
  only). A ValueError for a K that does not divide the chips."""
  if chips_per_run is None or chips_per_run == shape.chips:
    return [None]
  k = chips_per_run
  if k not in _CHIP_BOUNDS or shape.chips % k:
    raise config_check.ConfigError(
        f'--chips_per_run={k} does not divide the '
        f'{shape.chips} chips of {name}; use one of '
        f'{[d for d in _CHIP_BOUNDS if shape.chips % d == 0]}')
  if shape.hosts > 1:
    raise config_check.ConfigError(
        f'--chips_per_run={k}: {name} has {shape.hosts} hosts; '
        f'chip groups need a single-host VM (or '
        f'--chips_per_run={shape.chips})')
  return [tuple(range(i, i + k)) for i in range(0, shape.chips, k)]


def pinned_env(chips: Sequence[int], group: int) -> dict[str, str]:
  """The Cloud TPU runtime's variables that give one process of several on
  a TPU VM its own chips (`group` numbers the process on its VM): the
  visible chips, their bounds, a one-process topology and ports of its
  own."""
  port = BASE_PORT + 2 * group
  return {
      'TPU_VISIBLE_CHIPS': ','.join(map(str, chips)),
      'TPU_CHIPS_PER_PROCESS_BOUNDS': _CHIP_BOUNDS[len(chips)],
      'TPU_PROCESS_BOUNDS': '1,1,1',
      'CLOUD_TPU_TASK_ID': '0',
      'TPU_PROCESS_PORT': str(port),
      'TPU_PROCESS_ADDRESSES': f'localhost:{port}',
      'TPU_MESH_CONTROLLER_ADDRESS': f'localhost:{port + 1}',
      'TPU_MESH_CONTROLLER_PORT': str(port + 1),
  }


# The cloud.


@dataclasses.dataclass(frozen=True)
class Vm:
  """What `describe` says of a VM; state 'MISSING' when it does not exist
  (or gcloud could not tell)."""
  name: str
  state: str
  accelerator_type: str | None = None


class Gcloud:
  """`gcloud compute tpus tpu-vm describe` and `ssh`, nothing else."""

  def __init__(self, zone: str):
    self.zone = zone

  def _gcloud(self, verb: str, name: str, *args: str,
              timeout: float = 300) -> subprocess.CompletedProcess:
    command = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, name,
               f'--zone={self.zone}', *args]
    try:
      return subprocess.run(command, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
      return subprocess.CompletedProcess(command, 124, '', 'timed out')

  def describe(self, name: str) -> Vm:
    result = self._gcloud('describe', name, '--format=json', timeout=120)
    if result.returncode != 0:
      return Vm(name, 'MISSING')
    info = json.loads(result.stdout)
    return Vm(name, info.get('state', 'UNKNOWN'), info.get('acceleratorType'))

  def ssh(self, name: str, command: str) -> tuple[int, str]:
    """Runs `command` on every worker of VM `name`; (status, output)."""
    result = self._gcloud('ssh', name, '--worker=all', f'--command={command}')
    return result.returncode, (result.stdout + result.stderr).strip()


# What runs on the workers.


@dataclasses.dataclass(frozen=True)
class Remote:
  """How a worker runs the sweep's code: `prefix`, shell text that leaves it
  in the shipped source tree (`sweep_code.setup_command`, ending in
  ' && '), and `python`, a path valid there."""
  prefix: str
  python: str


def worker_command(remote: Remote, run_dir: str, epoch: int, vm: str,
                   chips: Sequence[int] | None, group: int,
                   beat_seconds: float, train: Sequence[str]) -> str:
  """Shell text each worker of `vm` runs for one attempt: in the
  background, detached (nohup setsid, stdin from /dev/null, output appended
  to `sweep_runs.worker_log_path` on the worker's disk), the set-up
  `remote.prefix` (the first time on a VM it builds a venv: minutes) and
  then the `worker` of this module; so ssh returns at once and a dropped
  connection stops nothing. The worker's first heartbeat comes after the
  set-up (`START_SECONDS`)."""
  log = sweep_runs.worker_log_path(run_dir)
  worker = [remote.python, '-m', 'mobilenet_jax.sweep_pool', 'worker', run_dir,
            f'--epoch={epoch}', f'--vm={vm}', f'--group={group}',
            f'--beat_seconds={beat_seconds:g}']
  if chips is not None:
    worker.append(f'--chips={",".join(map(str, chips))}')
  detached = f'{remote.prefix}exec {shlex.join([*worker, "--", *train])}'
  return (f'mkdir -p {sweep_code.home_path(os.path.dirname(log))} && '
          f'{{ nohup setsid bash -c {shlex.quote(detached)} '
          f'>> {sweep_code.home_path(log)} 2>&1 < /dev/null & }}')


def stop_command(remote: Remote, run_dir: str) -> str:
  """Shell text that kills, on every worker, the processes of `run_dir`."""
  return (f'{remote.prefix}'
          f'{shlex.join([remote.python, "-m", "mobilenet_jax.sweep_pool", "stop", run_dir])}')


def _processes(proc: str = '/proc') -> list[tuple[int, list[str]]]:
  """(pid, argv) of this machine's other processes."""
  found = []
  for entry in os.listdir(proc) if os.path.isdir(proc) else []:
    if not entry.isdigit() or int(entry) == os.getpid():
      continue
    try:
      with open(os.path.join(proc, entry, 'cmdline'), 'rb') as f:
        found.append((int(entry),
                      f.read().decode(errors='replace').split('\0')))
    except OSError:
      continue
  return found


def training_pids(run_dir: str, proc: str = '/proc') -> list[int]:
  """This machine's trainings into `run_dir` (`mobilenet_jax.main ...
  --workdir=RUN_DIR`)."""
  return [pid for pid, argv in _processes(proc)
          if 'mobilenet_jax.main' in argv and f'--workdir={run_dir}' in argv]


def run_pids(run_dir: str, proc: str = '/proc') -> list[int]:
  """This machine's processes of `run_dir`: its trainings and workers."""
  module = 'mobilenet_jax.sweep_pool'
  workers = [pid for pid, argv in _processes(proc) if module in argv and
             argv[argv.index(module) + 1:][:2] == ['worker', run_dir]]
  return sorted(set(training_pids(run_dir, proc)) | set(workers))


def heartbeat_path(run_dir: epath.Path, epoch: int,
                   host: str) -> epath.Path:
  return run_dir / f'heartbeat.{epoch}.{host}.json'


def read_lease(run_dir: epath.Path) -> dict:
  return sweep_runs.read_json(run_dir / LEASE_FILE) or {}


def worker(run_dir: str, epoch: int, vm: str, command: Sequence[str],
           chips: Sequence[int] | None = None, group: int = 0,
           beat_seconds: float = 30.0, host: str | None = None) -> int:
  """One attempt of a run on one host: trains with `command` (pinned to
  `chips` with `pinned_env`, and told its VM and chips through
  MOBILENET_JAX_VM / MOBILENET_JAX_CHIPS) while the run's lease has this
  `epoch`; every `beat_seconds` writes a beat and reads the lease, and
  kills the training at once (SIGKILL: no last checkpoint) when another
  attempt holds it. Copies this host's log into the run directory at the
  end and records the exit status. Returns it."""
  host = host or socket.gethostname()
  path = epath.Path(run_dir)
  beat_file = heartbeat_path(path, epoch, host)
  if read_lease(path).get('epoch') != epoch:
    print(f'{run_dir}: the lease is not epoch {epoch}; not training',
          flush=True)
    return 0
  if training_pids(run_dir):
    print(f'{run_dir} is training on {host} already; not starting it twice',
          flush=True)
    return 0
  pinned = pinned_env(chips, group) if chips is not None else {}
  env = {**os.environ, **pinned, 'MOBILENET_JAX_VM': vm,
         'MOBILENET_JAX_CHIPS': ','.join(map(str, chips)) if chips else 'all'}
  record = dict(epoch=epoch, vm=vm, host=host, chips=chips, env=pinned,
                started=time.time(), beats=0)
  print(f'$ {shlex.join(command)}', flush=True)
  process = subprocess.Popen(list(command), env=env)
  record['pid'] = process.pid
  sweep_runs.write_json(beat_file, record)
  returncode = None
  while returncode is None:
    try:
      returncode = process.wait(timeout=beat_seconds)
    except subprocess.TimeoutExpired:
      if read_lease(path).get('epoch') != epoch:
        process.send_signal(signal.SIGKILL)
        process.wait()
        print(f'{run_dir}: the lease moved past epoch {epoch}; training '
              'killed', flush=True)
        sweep_runs.write_json(beat_file, {**record, 'superseded': True,
                                          'returncode': -signal.SIGKILL})
        return -signal.SIGKILL
      record['beats'] += 1
      record['time'] = time.time()
      sweep_runs.write_json(beat_file, record)
  print(f'exit status {returncode}', flush=True)
  log = os.path.expanduser(sweep_runs.worker_log_path(run_dir))
  tail = ''
  if os.path.exists(log):
    with open(log, errors='replace') as f:
      text = f.read()
    (path / f'log.{vm}.{host}.txt').write_text(text)
    tail = '\n'.join(text.splitlines()[-sweep_runs.ERROR_TAIL_LINES:])
  sweep_runs.write_json(beat_file, {**record, 'returncode': returncode,
                                    'ended': time.time(), 'tail': tail})
  return returncode


def stop(run_dir: str) -> list[int]:
  """Kills (SIGKILL) this machine's processes of `run_dir`; their pids."""
  pids = run_pids(run_dir)
  for pid in pids:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  return pids


# The scheduler.


@dataclasses.dataclass
class Slot:
  """Where one training runs: VM `vm`, its `group`-th chip group (`chips`,
  None for the whole VM)."""
  vm: str
  group: int
  chips: tuple[int, ...] | None


@dataclasses.dataclass
class Attempt:
  """A running attempt as the pool watches it."""
  slot: Slot
  epoch: int
  last_change: float  # when its beats last changed (the launcher's clock)
  beats: tuple = ()


class Pool:
  """Hands the runs to the slots of the VMs until every run finished or
  failed.

  records: {run name: run.json record} (`sweep._prepare`), in queue order.
  launch(slot, name, epoch) -> (status, output): starts an attempt (ssh).
  stop(vm, name): kills the run's processes on `vm` (ssh).
  describe(vm) -> Vm. clock() and sleep(seconds): time.time, time.sleep.
  """

  def __init__(self, workdir: str, records: dict[str, dict],
               vms: Sequence[str], describe: Callable[[str], Vm],
               launch: Callable[[Slot, str, int], tuple[int, str]],
               stop: Callable[[str, str], None],
               chips_per_run: int | None = None, retries: int = RETRIES,
               heartbeat_seconds: float = HEARTBEAT_SECONDS,
               start_seconds: float = START_SECONDS,
               poll_seconds: float = 60.0,
               clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep,
               log: Callable[[str], None] = lambda line: print(line,
                                                               flush=True)):
    self.workdir = epath.Path(workdir)
    self.records = records
    self.vms = list(vms)
    self.describe, self.launch, self.stop = describe, launch, stop
    self.chips_per_run, self.retries = chips_per_run, retries
    self.heartbeat_seconds, self.start_seconds = (heartbeat_seconds,
                                                  start_seconds)
    self.poll_seconds, self.clock, self.sleep, self.log = (poll_seconds, clock,
                                                           sleep, log)
    self.slots: dict[str, list[Slot]] = {}
    self.states: dict[str, Vm] = {}
    self.running: dict[str, Attempt] = {}
    self.queue = [name for name, record in records.items()
                  if record['status'] not in ('finished', 'failed')]
    self.lost = dict.fromkeys(records, 0)  # attempts lost, this launcher

  def run_dir(self, name: str) -> epath.Path:
    return self.workdir / name

  def _save(self, name: str) -> None:
    sweep_runs.write_json(self.run_dir(name) / sweep_runs.RUN_FILE,
                          self.records[name])

  # VMs.

  def look_at_vms(self) -> None:
    """Describes every VM; a VM's slots are known once it was READY."""
    for name in self.vms:
      vm = self.describe(name)
      old = self.states.get(name)
      if old is None or old.state != vm.state:
        self.log(f'{name}: {vm.state}' + (f' ({vm.accelerator_type})'
                                          if vm.accelerator_type else ''))
      self.states[name] = vm
      if vm.state == READY and name not in self.slots:
        try:  # without chip groups any VM is one slot, whatever its type
          groups = ([None] if self.chips_per_run is None else chip_groups(
              vm_shape(vm.accelerator_type or ''), self.chips_per_run, name))
        except ValueError as e:  # a VM that changed since the start
          self.log(f'{name}: not used: {e}')
          groups = []
        self.slots[name] = [Slot(name, i, chips)
                            for i, chips in enumerate(groups)]

  def free_slots(self) -> list[Slot]:
    busy = {(a.slot.vm, a.slot.group) for a in self.running.values()}
    return [slot for name in self.vms if self.states[name].state == READY
            for slot in self.slots.get(name, [])
            if (slot.vm, slot.group) not in busy]

  # Runs.

  def adopt(self) -> None:
    """Watches the attempts a previous launcher started (status running
    with a lease) instead of starting them again."""
    for name in list(self.queue):
      record = self.records[name]
      lease = read_lease(self.run_dir(name))
      if record['status'] == 'running' and lease.get('vm') in self.vms:
        chips = tuple(lease['chips']) if lease.get('chips') else None
        slot = Slot(lease['vm'], lease.get('group', 0), chips)
        now = self.clock()
        self.running[name] = Attempt(slot, lease['epoch'], now)
        self.queue.remove(name)
        self.log(f'{name}: running on {slot.vm} before; watching it')

  def start(self, name: str, slot: Slot) -> None:
    record = self.records[name]
    epoch = read_lease(self.run_dir(name)).get('epoch', 0) + 1
    sweep_runs.write_json(self.run_dir(name) / LEASE_FILE, dict(
        epoch=epoch, vm=slot.vm, group=slot.group,
        chips=list(slot.chips) if slot.chips else None, granted=self.clock()))
    now = self.clock()
    if slot.chips:
      chip_count = len(slot.chips)
    else:  # the whole VM: 0 (no chip-hours) for a type we do not know
      try:
        chip_count = vm_shape(self.states[slot.vm].accelerator_type or '').chips
      except ValueError:
        chip_count = 0
    record.update(status='running', vm=slot.vm,
                  chips=list(slot.chips) if slot.chips else None, epoch=epoch,
                  error=None)
    record.setdefault('attempts', []).append(dict(
        epoch=epoch, vm=slot.vm, chips=record['chips'], chip_count=chip_count,
        start=now, end=None, outcome=None))
    self._save(name)
    where = slot.vm + (f' chips {record["chips"]}' if slot.chips else '')
    self.log(f'{name}: starting on {where} (attempt {len(record["attempts"])}'
             ')')
    self.running[name] = Attempt(slot, epoch, now)
    status, output = self.launch(slot, name, epoch)
    if status != 0:
      self.lose(name, f'ssh to {slot.vm} failed ({status}): '
                f'{(output.splitlines() or [""])[-1]}')

  def end(self, name: str, outcome: str, error: str | None = None,
          returncode: int | None = None) -> None:
    attempt = self.running.pop(name)
    record = self.records[name]
    record['attempts'][-1].update(end=self.clock(), outcome=outcome)
    if outcome in ('finished', 'failed'):
      record.update(status=outcome, error=error, returncode=returncode)
    self._save(name)
    self.log(f'{name}: {outcome} on {attempt.slot.vm}' +
             (f': {error}' if error else ''))

  def lose(self, name: str, reason: str) -> None:
    """An attempt lost to the infrastructure: back to the queue's front
    (after the old VM killed it, if it answers), or failed after
    `retries` losses."""
    slot = self.running[name].slot
    if sweep_runs.is_finished(self.run_dir(name)):  # trained, then lost
      self.end(name, 'finished', returncode=0)
      if self.states.get(slot.vm, Vm(slot.vm, '')).state == READY:
        self.stop(slot.vm, name)
      return
    self.end(name, 'lost', reason)
    record = self.records[name]
    self.lost[name] += 1
    lost = self.lost[name]
    if self.states.get(slot.vm, Vm(slot.vm, '')).state == READY:
      self.stop(slot.vm, name)
    if lost > self.retries:
      record.update(status='failed', error=f'lost {lost} times (--retries='
                    f'{self.retries}); last: {reason}')
      self._save(name)
      self.log(f'{name}: failed: {record["error"]}')
    else:
      record.update(status='pending', error=None)
      self._save(name)
      self.queue.insert(0, name)

  def check(self, name: str) -> None:
    """Whether a running attempt finished, failed, or was lost. Its slot
    is free only once its workers exited (their chips are free then)."""
    attempt = self.running[name]
    run_dir = self.run_dir(name)
    finished = sweep_runs.is_finished(run_dir)
    beats = [sweep_runs.read_json(p) for p in sorted(
        run_dir.glob(f'heartbeat.{attempt.epoch}.*.json'))]
    beats = [b for b in beats if b]
    ended = [b for b in beats if b.get('returncode') is not None]
    for beat in ended:
      if beat['returncode'] in RUN_FAILURES:
        tail = beat.get('tail', '')
        (run_dir / sweep_runs.ERROR_FILE).write_text(tail + '\n')
        lines = tail.strip().splitlines()
        self.end(name, 'failed', lines[-1] if lines else
                 f'exit status {beat["returncode"]}', beat['returncode'])
        return
    crashed = [b for b in ended if b['returncode'] != 0]
    if finished and beats and len(ended) == len(beats) and not crashed:
      self.end(name, 'finished', returncode=0)
      return
    if crashed or (beats and len(ended) == len(beats)):
      beat = (crashed or ended)[0]
      self.lose(name, f'training on {beat["vm"]} ({beat["host"]}) ended with '
                f'status {beat["returncode"]} before the final evaluation')
      return
    vm = self.states[attempt.slot.vm]
    if vm.state != READY:
      self.lose(name, f'{vm.name} is {vm.state}')
      return
    now = self.clock()
    seen = tuple((b['host'], b['beats']) for b in beats)
    if seen != attempt.beats:
      attempt.beats, attempt.last_change = seen, now
    limit = self.heartbeat_seconds if beats else max(self.heartbeat_seconds,
                                                     self.start_seconds)
    if now - attempt.last_change > limit:
      self.lose(name, f'no heartbeat for {limit:.0f} s')

  def step(self) -> None:
    """One round: VMs, running attempts, free slots."""
    self.look_at_vms()
    for name in list(self.running):
      self.check(name)
    for slot in self.free_slots():
      if not self.queue:
        break
      self.start(self.queue.pop(0), slot)

  def run(self) -> dict[str, str]:
    """Steps until no run is pending or running; {name: status}."""
    self.look_at_vms()
    self.adopt()
    while self.queue or self.running:
      self.step()
      if self.queue or self.running:
        self.sleep(self.poll_seconds)
    return {name: record['status'] for name, record in self.records.items()}


def _parse_worker(argv: Sequence[str]) -> dict:
  if '--' not in argv or len(argv) < 2:
    raise ValueError
  split = list(argv).index('--')
  args, command = argv[:split], argv[split + 1:]
  options = dict(arg[2:].split('=', 1) for arg in args[1:])
  chips = options.get('chips')
  return dict(run_dir=args[0], epoch=int(options['epoch']), vm=options['vm'],
              group=int(options.get('group', 0)),
              beat_seconds=float(options.get('beat_seconds', 30)),
              chips=[int(c) for c in chips.split(',')] if chips else None,
              command=command)


if __name__ == '__main__':
  if sys.argv[1:2] == ['stop'] and len(sys.argv) == 3:
    print(f'killed {stop(sys.argv[2]) or "nothing"}', flush=True)
  elif sys.argv[1:2] == ['worker']:
    try:
      kwargs = _parse_worker(sys.argv[2:])
    except (ValueError, KeyError):
      sys.exit('usage: python -m mobilenet_jax.sweep_pool worker RUN_DIR '
               '--epoch=E --vm=NAME [--chips=0,1 --group=G] '
               '[--beat_seconds=S] -- COMMAND...  |  stop RUN_DIR')
    sys.exit(worker(**kwargs))
  else:
    sys.exit('usage: python -m mobilenet_jax.sweep_pool worker RUN_DIR ... -- '
             'COMMAND...  |  stop RUN_DIR')
