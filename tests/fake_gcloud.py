"""A fake `gcloud compute tpus tpu-vm {list,describe,ssh,scp}` that
simulates TPU VMs on this machine, for the pool's tests.

Each VM is a folder FAKE_GCLOUD_ROOT/<name>/: vm.json holds its `state` and
`acceleratorType` (a test flips them), home/ is its home folder. `ssh
--worker=all --command=C` runs `bash -c C` there (HOME and the working
directory = home/, FAKE_GCLOUD_VM=<name> in the environment, so a test can
find and kill the VM's processes, detached ones included) and appends C to
ssh.log; it fails like gcloud when the VM is not READY. `scp` copies
between this machine and NAME:PATH (relative to the VM's home).

Use it from a test with `install(tmp_path)`, which writes a `gcloud`
executable into a bin folder to put first on PATH, and `make_vm`,
`set_state`, `preempt`.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

ROOT_VAR = 'FAKE_GCLOUD_ROOT'
VM_VAR = 'FAKE_GCLOUD_VM'


def install(tmp_path) -> tuple[str, str]:
  """A bin folder with a `gcloud` that runs this file, and the VMs' root;
  put the first on PATH and the second in FAKE_GCLOUD_ROOT."""
  bin_dir, root = tmp_path / 'fake_bin', tmp_path / 'fake_vms'
  bin_dir.mkdir()
  root.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text(f'#!/bin/sh\nexec {sys.executable} '
                    f'{os.path.abspath(__file__)} "$@"\n')
  gcloud.chmod(0o755)
  return str(bin_dir), str(root)


def make_vm(root, name: str, accelerator_type: str, state: str = 'READY'):
  """A VM folder; returns its home."""
  home = os.path.join(root, name, 'home')
  os.makedirs(home)
  set_state(root, name, state, accelerator_type)
  return home


def set_state(root, name: str, state: str,
              accelerator_type: str | None = None) -> None:
  path = os.path.join(root, name, 'vm.json')
  info = {}
  if os.path.exists(path):
    with open(path) as f:
      info = json.load(f)
  info['state'] = state
  if accelerator_type:
    info['acceleratorType'] = accelerator_type
  with open(path + '.tmp', 'w') as f:
    json.dump(info, f)
  os.replace(path + '.tmp', path)


def vm_pids(root, name: str, proc: str = '/proc') -> list[int]:
  """The processes started on VM `name` of `root` (FAKE_GCLOUD_VM and
  FAKE_GCLOUD_ROOT in their environment)."""
  pids = []
  for entry in os.listdir(proc):
    if not entry.isdigit():
      continue
    try:
      with open(os.path.join(proc, entry, 'environ'), 'rb') as f:
        env = f.read().split(b'\0')
    except OSError:
      continue
    if (f'{VM_VAR}={name}'.encode() in env and
        f'{ROOT_VAR}={root}'.encode() in env):
      pids.append(int(entry))
  return pids


def preempt(root, name: str) -> list[int]:
  """What a preemption does: every process of the VM dies (SIGKILL), and
  `describe` says PREEMPTED. Returns the killed pids."""
  set_state(root, name, 'PREEMPTED')
  pids = vm_pids(root, name)
  for pid in pids:
    with contextlib.suppress(ProcessLookupError):
      os.kill(pid, signal.SIGKILL)
  return pids


# The command line.


def _fail(message: str, status: int = 1):
  sys.stderr.write(f'ERROR: (gcloud.compute.tpus.tpu-vm) {message}\n')
  sys.exit(status)


def _info(root: str, name: str) -> dict | None:
  path = os.path.join(root, name, 'vm.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    info = json.load(f)
  return {'name': f'projects/fake/locations/zone/nodes/{name}',
          'state': info['state'], 'acceleratorType': info['acceleratorType']}


def _vm_path(root: str, arg: str) -> str:
  """NAME:PATH -> its place on this machine; a local path as it is."""
  name, sep, path = arg.partition(':')
  if not sep or os.path.sep in name:
    return arg
  if _info(root, name) is None:
    _fail(f'NOT_FOUND: {name}')
  path = path[2:] if path.startswith('~/') else path
  return os.path.join(root, name, 'home', path)


def main(argv: list[str]) -> None:
  root = os.environ[ROOT_VAR]
  if argv[:3] != ['compute', 'tpus', 'tpu-vm'] or len(argv) < 4:
    _fail(f'fake gcloud supports compute tpus tpu-vm only, got {argv}')
  verb, rest = argv[3], argv[4:]
  options = dict(a[2:].split('=', 1) for a in rest
                 if a.startswith('--') and '=' in a)
  positional = [a for a in rest if not a.startswith('--')]
  if 'zone' not in options:
    _fail('--zone is required')
  if verb == 'list':
    infos = [_info(root, n) for n in sorted(os.listdir(root))]
    print(json.dumps([i for i in infos if i]))
  elif verb == 'describe':
    info = _info(root, positional[0])
    if info is None:
      _fail(f'NOT_FOUND: {positional[0]}')
    print(json.dumps(info))
  elif verb == 'ssh':
    name = positional[0]
    info = _info(root, name)
    if info is None:
      _fail(f'NOT_FOUND: {name}')
    if info['state'] != 'READY':
      _fail(f'{name} is {info["state"]}; ssh: connect to host: Connection '
            'timed out', 255)
    if options.get('worker') != 'all' or 'command' not in options:
      _fail('the fake runs ssh --worker=all --command=... only')
    home = os.path.join(root, name, 'home')
    with open(os.path.join(root, name, 'ssh.log'), 'a') as f:
      f.write(options['command'] + '\n')
    env = {**os.environ, 'HOME': home, VM_VAR: name}
    sys.exit(subprocess.call(['bash', '-c', options['command']], cwd=home,
                             env=env))
  elif verb == 'scp':
    *sources, target = [_vm_path(root, a) for a in positional]
    for source in sources:
      if os.path.isdir(source):
        shutil.copytree(source, os.path.join(target, os.path.basename(source))
                        if os.path.isdir(target) else target,
                        dirs_exist_ok=True)
      else:
        shutil.copy(source, target)
  else:
    _fail(f'fake gcloud has no tpu-vm {verb}')


if __name__ == '__main__':
  main(sys.argv[1:])
