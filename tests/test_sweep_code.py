"""Code shipped with a sweep (`sweep_code`): packing, hashing, and a worker
with no repository setting itself up from the pack (fake VMs: a directory as
HOME, as the fake gcloud pool does)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO
from mobilenet_jax import sweep_code
# fake_cloud: the fake gcloud pool's fixture.
from test_sweep_pool import fake_cloud, sweep_command, write_sweep


def _git(root, *args):
  return subprocess.run(['git', '-C', str(root), *args], check=True,
                        capture_output=True, text=True).stdout.strip()


def _commit_all(root):
  _git(root, 'add', '-A')
  _git(root, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm',
       'tree')


def _project_copy(tmp_path):
  """A git checkout holding a copy of this project's files (tracked and
  untracked, not ignored)."""
  root = tmp_path / 'src'
  for path in _git(REPO, 'ls-files', '--cached', '--others',
                   '--exclude-standard').splitlines():
    if os.path.isfile(os.path.join(REPO, path)):
      (root / path).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(os.path.join(REPO, path), root / path)
  _git(tmp_path, 'init', '-q', str(root))
  _commit_all(root)
  return root


@pytest.fixture
def small_tree(tmp_path):
  """A committed git checkout with the files a pack needs, plus what must
  and must not be shipped."""
  root = tmp_path / 'small'
  files = {'pyproject.toml': '[project]\nrequires-python = ">=3.11,<3.12"\n',
           'requirements.lock': 'jax==0.10.2\n',
           sweep_code.SETUP_SCRIPT: 'echo set up\n',
           'mobilenet_jax/__init__.py': '',
           '.gitignore': 'ignored.txt\n'}
  for path, text in files.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
  _git(tmp_path, 'init', '-q', str(root))
  _commit_all(root)
  # Untracked, not ignored: shipped. Ignored, outputs, venvs: never.
  (root / 'notes.py').write_text('x = 1\n')
  for path in ('ignored.txt', 'runs/a/metrics.jsonl', '.venv/bin/python',
               'mobilenet_jax/__pycache__/x.pyc'):
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text('no')
  return root


def _archive_members(archive):
  with tarfile.open(archive) as tar:
    return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}


def test_pack_ships_the_tree_with_its_changes_and_nothing_else(
    small_tree, tmp_path, monkeypatch):
  (small_tree / 'mobilenet_jax/__init__.py').write_text('CHANGED = 1\n')
  code = sweep_code.pack(str(tmp_path / 'sweep'), str(small_tree))
  assert code.archive == str(tmp_path / 'sweep/code' /
                             f'{code.code_hash}.tar.gz')
  members = _archive_members(code.archive)
  shipped = ['.gitignore', 'mobilenet_jax/__init__.py',
             sweep_code.SETUP_SCRIPT, 'notes.py', 'pyproject.toml',
             'requirements.lock']
  assert sorted(members) == sorted([sweep_code.MANIFEST, *shipped])
  for path in shipped:  # the bytes on disk, uncommitted change included
    member, data = members[path]
    assert data == (small_tree / path).read_bytes()
    assert (member.mtime, member.uid, member.gid, member.uname) == (0, 0, 0,
                                                                    '')
  manifest = json.loads(members[sweep_code.MANIFEST][1])
  assert manifest == {'code_hash': code.code_hash,
                      'git_commit': _git(small_tree, 'rev-parse', 'HEAD'),
                      'git_dirty': True, 'files': shipped}
  assert len(code.git_commit) == 40 and code.git_dirty
  assert code.python_spec == '>=3.11,<3.12'
  monkeypatch.chdir(tmp_path)  # a relative sweep directory: named whole
  assert sweep_code.pack('sweep', str(small_tree)).archive == code.archive


def test_code_hash_follows_the_contents_alone(small_tree, tmp_path):
  first = sweep_code.pack(str(tmp_path / 'a'), str(small_tree))
  # Another copy of the same tree (other mtimes, other place): same hash,
  # byte-identical archive.
  copy = tmp_path / 'copy'
  shutil.copytree(small_tree, copy)
  again = sweep_code.pack(str(tmp_path / 'b'), str(copy))
  assert again.code_hash == first.code_hash
  with open(first.archive, 'rb') as f1, open(again.archive, 'rb') as f2:
    assert f1.read() == f2.read()
  # Committing changes the commit, not the code.
  _commit_all(small_tree)
  committed = sweep_code.pack(str(tmp_path / 'c'), str(small_tree))
  assert committed.code_hash == first.code_hash
  assert committed.git_commit != first.git_commit
  assert not committed.git_dirty
  # One byte, or an executable bit, is other code.
  (small_tree / 'notes.py').write_text('x = 2\n')
  edited = sweep_code.pack(str(tmp_path / 'c'), str(small_tree))
  os.chmod(small_tree / 'notes.py', 0o755)
  executable = sweep_code.pack(str(tmp_path / 'c'), str(small_tree))
  assert len({first.code_hash, edited.code_hash, executable.code_hash}) == 3
  assert sorted(os.listdir(tmp_path / 'c/code')) == sorted(
      f'{code.code_hash}.tar.gz' for code in (first, edited, executable))
  # The venv is keyed on the dependencies, not on the code.
  assert edited.deps_hash == first.deps_hash
  (small_tree / 'requirements.lock').write_text('jax==0.10.1\n')
  assert sweep_code.pack(str(tmp_path / 'c'),
                         str(small_tree)).deps_hash != first.deps_hash


def test_pack_without_git(small_tree, tmp_path):
  """A project tree without .git ships every file but outputs, venvs and
  caches, with the hash the same files have in a checkout; a folder that
  is no project tree is an error."""
  (small_tree / 'ignored.txt').unlink()
  in_git = sweep_code.pack(str(tmp_path / 'a'), str(small_tree))
  shutil.rmtree(small_tree / '.git')
  no_git = sweep_code.pack(str(tmp_path / 'b'), str(small_tree))
  assert no_git.code_hash == in_git.code_hash
  assert (no_git.git_commit, no_git.git_dirty) == (None, None)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='neither a git checkout nor a '
                     'project tree'):
    sweep_code.pack(str(tmp_path / 'sweep'), str(tmp_path / 'empty'))


def _on_worker(home, command, env=None, timeout=120):
  """`command` in bash as on a fake VM: HOME is its directory, started from
  elsewhere (no repository anywhere near)."""
  env = {**os.environ, 'HOME': str(home), 'JAX_PLATFORMS': 'cpu',
         **(env or {})}
  env.pop('PYTHONPATH', None)
  return subprocess.run(['bash', '-c', command], cwd=home, env=env,
                        capture_output=True, text=True, timeout=timeout)


_REPORT = ('import json, mobilenet_jax; from mobilenet_jax import provenance; '
           "provenance.record('{workdir}'); print(json.dumps(["
           "mobilenet_jax.__file__, getattr(mobilenet_jax, 'MARKER', None)]))")


@pytest.mark.multiprocess
def test_a_worker_without_repository_runs_the_shipped_code(tmp_path):
  """--remote_python is this venv's interpreter (an editable install of the
  launching checkout), yet the worker imports the packed tree: a marker
  that only the packed tree has, and provenance from its manifest."""
  source = _project_copy(tmp_path)
  init = source / 'mobilenet_jax/__init__.py'
  init.write_text(init.read_text() + "MARKER = 'shipped-1'\n")
  sweep_dir, vm = tmp_path / 'sweep', tmp_path / 'vm0'
  vm.mkdir()
  reported = []
  for marker in ('shipped-1', 'shipped-2'):
    init.write_text(init.read_text().replace("'shipped-1'", f"'{marker}'"))
    code = sweep_code.pack(str(sweep_dir), str(source))
    prefix, python = sweep_code.setup_command(code,
                                              remote_python=sys.executable)
    workdir = tmp_path / marker
    done = _on_worker(vm, f'{prefix} && {python} -c '
                      f'"{_REPORT.format(workdir=workdir)}"',
                      env={'MOBILENET_JAX_VM': 'vm0',
                           'MOBILENET_JAX_CHIPS': '2,3'})
    assert done.returncode == 0, done.stderr
    module_file, seen_marker = json.loads(done.stdout.splitlines()[-1])
    tree = vm / '.mobilenet_jax/code' / code.code_hash
    assert module_file == str(tree / 'mobilenet_jax/__init__.py')
    assert seen_marker == marker
    record = json.loads((workdir / 'provenance.json').read_text())
    assert record['code_hash'] == code.code_hash
    assert record['git_commit'] == _git(source, 'rev-parse', 'HEAD')
    assert record['git_dirty'] is True
    assert (record['vm'], record['chips']) == ('vm0', '2,3')
    assert record['source'] == str(tree)
    reported.append(record['code_hash'])
  assert reported[0] != reported[1]  # the change made other code
  assert sorted(os.listdir(vm / '.mobilenet_jax/code')) == sorted(reported)


def _fake_uv(bin_dir, log):
  """A `uv` that logs its arguments to `log`, fails `pip` while LOG.fail
  exists, and for `venv DIR` makes DIR/bin/python run this interpreter."""
  uv = bin_dir / 'uv'
  bin_dir.mkdir(parents=True, exist_ok=True)
  uv.write_text(f"""#!{sys.executable}
import os, sys, time
with open({str(log)!r}, 'a') as f:
  f.write(' '.join(sys.argv[1:]) + '\\n')
if sys.argv[1] == 'pip' and os.path.exists({str(log)!r} + '.fail'):
  sys.exit('no network')
if sys.argv[1] == 'venv':
  time.sleep(0.5)  # a slow set-up, so concurrent workers overlap
  os.makedirs(sys.argv[-1] + '/bin')
  with open(sys.argv[-1] + '/bin/python', 'w') as f:
    f.write('#!/bin/sh\\nexec {sys.executable} "$@"\\n')
  os.chmod(sys.argv[-1] + '/bin/python', 0o755)
""")
  uv.chmod(0o755)
  return uv


@pytest.mark.multiprocess
def test_two_processes_on_one_worker_set_it_up_once(small_tree, tmp_path):
  """Without --remote_python: worker_setup.sh builds the venv with uv (a
  fake on PATH) once, for two set-ups started together, then runs in the
  shipped tree."""
  shutil.copy(os.path.join(REPO, sweep_code.SETUP_SCRIPT),
              small_tree / sweep_code.SETUP_SCRIPT)
  code = sweep_code.pack(str(tmp_path / 'sweep'), str(small_tree))
  prefix, python = sweep_code.setup_command(code)
  vm, log = tmp_path / 'vm', tmp_path / 'uv.log'
  vm.mkdir()
  _fake_uv(tmp_path / 'bin', log)
  env = {'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}'}
  assert python == '.venv/bin/python'
  command = f'{prefix} && {python} -c "import os; print(os.getcwd())"'
  workers = [subprocess.Popen(
      ['bash', '-c', command], cwd=vm, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'HOME': str(vm), **env}) for _ in range(2)]
  tree = vm / '.mobilenet_jax/code' / code.code_hash
  for worker in workers:
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert out.strip() == str(tree)
  venv = vm / '.mobilenet_jax/venv' / code.deps_hash[:16]
  assert log.read_text().splitlines() == [
      f'venv --quiet --python >=3.11,<3.12 {venv}',
      f'pip install --quiet --python {venv}/bin/python -r '
      f'{tree}/pyproject.toml --extra tpu -c {tree}/requirements.lock']
  assert (venv / '.installed').exists()
  assert os.listdir(vm / '.mobilenet_jax/code') == [code.code_hash]


@pytest.mark.skipif(shutil.which('uv', path='/usr/bin:/bin') is not None,
                    reason='a uv in /usr/bin or /bin')
def test_worker_setup_installs_uv_with_pip_when_it_has_none(tmp_path):
  """No uv anywhere: the script installs it with `python3 -m pip install
  --user` (a fake python3 that puts the fake uv in ~/.local/bin)."""
  home, log = tmp_path / 'home', tmp_path / 'calls.log'
  fake_bin = tmp_path / 'bin'
  _fake_uv(tmp_path / 'uv_source', log)
  fake_bin.mkdir()
  (fake_bin / 'python3').write_text(
      f'#!/bin/sh\necho "python3 $*" >> {log}\n'
      f'mkdir -p $HOME/.local/bin && cp {tmp_path}/uv_source/uv '
      '$HOME/.local/bin/uv\n')
  (fake_bin / 'python3').chmod(0o755)
  done = subprocess.run(
      ['bash', os.path.join(REPO, sweep_code.SETUP_SCRIPT), '/tree',
       str(home / 'venv'), '3.11'], capture_output=True, text=True,
      env={'HOME': str(home), 'PATH': f'{fake_bin}:/usr/bin:/bin'})
  assert done.returncode == 0, done.stderr
  calls = log.read_text().splitlines()
  assert calls[0] == "python3 -m pip install --quiet --user uv>=0.5,<1"
  assert calls[1] == f'venv --quiet --python 3.11 {home}/venv'
  assert calls[2].startswith(f'pip install --quiet --python {home}/venv')


def test_setup_command_fetches_from_gcs_and_checks_remote_python(
    small_tree, tmp_path):
  code = sweep_code.pack(str(tmp_path / 'sweep'), str(small_tree))
  on_gcs = sweep_code.CodeRef(**{**code.__dict__,
                                 'archive': 'gs://b/s/code/h.tar.gz'})
  prefix, python = sweep_code.setup_command(on_gcs, 'venv/bin/python')
  assert 'gcloud storage cp gs://b/s/code/h.tar.gz' in prefix
  assert python == '../../../venv/bin/python'  # from the tree to home
  vm = tmp_path / 'vm'
  (vm / 'bin').mkdir(parents=True)
  os.symlink(sys.executable, vm / 'bin/py')
  prefix, python = sweep_code.setup_command(code, '~/bin/py')
  done = _on_worker(vm, f'{prefix} && {shlex.quote(python)} -c '
                    '"import os; print(os.getcwd())"')
  assert done.stdout.strip() == str(vm / '.mobilenet_jax/code' /
                                    code.code_hash)
  prefix, python = sweep_code.setup_command(code, 'no such/python')
  done = _on_worker(vm, f'{prefix} && echo started')
  assert done.returncode == 1 and 'started' not in done.stdout
  assert 'no interpreter no such/python on this worker' in done.stderr


def test_a_failed_worker_setup_is_redone_next_time(tmp_path):
  log, venv = tmp_path / 'uv.log', tmp_path / 'home/venv'
  _fake_uv(tmp_path / 'bin', log)
  (tmp_path / 'uv.log.fail').touch()
  setup = ['bash', os.path.join(REPO, sweep_code.SETUP_SCRIPT), '/tree',
           str(venv), '3.11']
  env = {**os.environ, 'HOME': str(tmp_path / 'home'),
         'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}'}
  failed = subprocess.run(setup, env=env, capture_output=True, text=True)
  assert failed.returncode != 0 and 'no network' in failed.stderr
  assert not (venv / '.installed').exists()
  (tmp_path / 'uv.log.fail').unlink()
  assert subprocess.run(setup, env=env).returncode == 0
  assert (venv / '.installed').exists()
  # The partial venv is rebuilt, not trusted.
  assert [line.split()[0] for line in log.read_text().splitlines()] == [
      'venv', 'pip', 'venv', 'pip']
  assert subprocess.run(setup, env=env).returncode == 0  # set up: no-op
  assert len(log.read_text().splitlines()) == 4


@pytest.mark.slow  # about 60-90 s here: one tiny training on a fake VM
@pytest.mark.multiprocess
def test_a_pool_sweep_trains_the_tree_it_was_launched_from(tmp_path, data_dir,
                                                           fake_cloud):
  """`sweep run` from a changed copy of the project, on a fake VM with no
  repository and this venv's interpreter (--remote_python): the training
  runs the copy's shipped tree and records its hash and commit."""
  root, env, add_vm = fake_cloud
  add_vm('vm0', 'v5litepod-1')
  source = _project_copy(tmp_path)
  init = source / 'mobilenet_jax/__init__.py'
  init.write_text(init.read_text() + '# a change only this copy has\n')
  workdir = tmp_path / 'sweep'
  sweep_file = write_sweep(tmp_path, 'h.sweep("seed", [0])')
  done = subprocess.run(
      sweep_command(sweep_file, workdir, data_dir, '--tpu=vm0',
                    '--config.num_train_steps=2'),
      cwd=source, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  (archive,) = os.listdir(workdir / 'code')
  code_hash = archive.removesuffix('.tar.gz')
  record = json.loads((workdir / 'seed_0/provenance.json').read_text())
  assert record['code_hash'] == code_hash
  assert record['code_hash'] != sweep_code.tree_hash(
      REPO, sweep_code.source_files(REPO))
  assert record['git_commit'] == _git(source, 'rev-parse', 'HEAD')
  assert record['git_dirty'] is True
  assert record['vm'] == 'vm0'
  assert record['source'] == os.path.join(root, 'vm0/home/.mobilenet_jax/code',
                                          code_hash)
