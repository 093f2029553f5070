"""Code shipped with a sweep: the source tree `sweep run` runs from, packed
into the sweep directory under a content hash, and the shell text a TPU VM
worker runs to set itself up from it, once per hash.

What is shipped: the files `git ls-files --cached --others
--exclude-standard` lists (tracked files, read from disk with their
uncommitted changes, plus untracked files .gitignore does not exclude),
never runs/, workdirs/, venvs or caches even where .gitignore misses them
(a project tree without git: every file but those, .git, build/ and
*.egg-info; the commit is then null).
The code hash is the sha256 of the sorted file list with each file's kind
(mode or symlink) and contents, so the same tree gives the same hash on any
machine and any changed byte gives another. The archive
DIR/code/<hash>.tar.gz is a sorted tar with zeroed times and owners, and
carries CODE_MANIFEST.json (hash, git commit, dirty flag, files), from which
`provenance` reads what a run's code was where there is no .git.

On a worker: the archive is unpacked once into ~/.mobilenet_jax/code/<hash>
(a temporary directory renamed into place: concurrent processes on one VM
unpack at most once each and never see half a tree) and the run starts
there with PYTHONPATH on it, so the shipped code is from mobilenet_jax import config_check
imported, whatever else
the interpreter has installed. The interpreter is a venv that
`worker_setup.sh` (shipped too) builds with uv, once per dependency set
(pyproject.toml, requirements.lock and the script itself) under a lock, or
the `--remote_python` one set up by hand.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shlex
import subprocess
import tarfile
import tomllib

from etils import epath

from mobilenet_jax import config_check

MANIFEST = 'CODE_MANIFEST.json'  # at the root of a shipped tree
CODE_DIR = '~/.mobilenet_jax/code'  # on a worker: one unpacked tree per hash
VENV_DIR = '~/.mobilenet_jax/venv'  # on a worker: one venv per dependency set
SETUP_SCRIPT = 'mobilenet_jax/worker_setup.sh'
# Never shipped, even where .gitignore does not exclude them: outputs, venvs
# and caches (a path is left out when one of its directories matches).
_NEVER_SHIPPED = ('runs', 'workdirs', '__pycache__', '.pytest_cache')
_NEVER_SHIPPED_PREFIXES = ('.venv', 'venv')


@dataclasses.dataclass(frozen=True)
class CodeRef:
  """A packed source tree in a sweep directory (`pack`)."""
  code_hash: str  # sha256 hex of the shipped files (`tree_hash`)
  archive: str  # DIR/code/<code_hash>.tar.gz
  deps_hash: str  # sha256 hex of what the worker's venv is built from
  python_spec: str  # pyproject's requires-python, e.g. '>=3.11,<3.12'
  git_commit: str | None  # full hash of HEAD; None without git
  git_dirty: bool | None  # uncommitted changes or untracked files shipped


def source_root() -> str:
  """The directory the running `mobilenet_jax` package is imported from."""
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(root: str, *args: str) -> str:
  return subprocess.run(['git', '-C', root, *args], check=True,
                        capture_output=True, text=True).stdout


def is_git_checkout(root: str) -> bool:
  """Whether `root` is the top of a git work tree (git installed)."""
  try:
    top = _git(root, 'rev-parse', '--show-toplevel').strip()
  except (OSError, subprocess.CalledProcessError):
    return False
  return os.path.realpath(top) == os.path.realpath(root)


def _shipped(path: str) -> bool:
  return not any(part in _NEVER_SHIPPED or
                 part.startswith(_NEVER_SHIPPED_PREFIXES)
                 for part in path.split('/')[:-1])


def source_files(root: str) -> list[str]:
  """The sorted paths, relative to `root`, that a sweep ships (module
  docstring); tracked files deleted from disk are left out. A project tree
  without git (a pyproject.toml, no .git) ships every file but .git,
  build/, *.egg-info and what is never shipped; anything else is a
  ValueError."""
  if is_git_checkout(root):
    listed = _git(root, 'ls-files', '-z', '--cached', '--others',
                  '--exclude-standard').split('\0')
  elif os.path.isfile(os.path.join(root, 'pyproject.toml')):
    listed = []
    for folder, subfolders, names in os.walk(root):
      subfolders[:] = [name for name in subfolders if name not in (
          '.git', 'build') and not name.endswith('.egg-info')]
      listed += [os.path.relpath(os.path.join(folder, name), root)
                 for name in names]
  else:
    raise config_check.ConfigError(
        f'{root} is neither a git checkout nor a project tree '
        '(pyproject.toml): sweep run ships the tree it runs from')
  return sorted({path for path in listed if path and _shipped(path) and
                 os.path.lexists(os.path.join(root, path))})


def _entry(root: str, path: str) -> tuple[str, bytes]:
  """('symlink', target) or (octal mode '644' / '755', contents)."""
  full = os.path.join(root, path)
  if os.path.islink(full):
    return 'symlink', os.readlink(full).encode()
  mode = '755' if os.stat(full).st_mode & 0o111 else '644'
  with open(full, 'rb') as f:
    return mode, f.read()


def tree_hash(root: str, files: list[str]) -> str:
  """sha256 hex over `files` in order: each path, kind and contents,
  length-prefixed so no two trees give the same byte stream."""
  digest = hashlib.sha256()
  for path in files:
    kind, data = _entry(root, path)
    for part in (path.encode(), kind.encode(), data):
      digest.update(len(part).to_bytes(8, 'big') + part)
  return digest.hexdigest()


def git_state(root: str) -> tuple[str | None, bool | None]:
  """(full commit hash of HEAD, whether the shipped tree differs from it);
  (None, None) outside a git checkout."""
  if not is_git_checkout(root):
    return None, None
  commit = _git(root, 'rev-parse', 'HEAD').strip()
  dirty = bool(_git(root, 'status', '--porcelain', '--untracked-files=all')
               .strip())
  return commit, dirty


def _archive_bytes(root: str, files: list[str], manifest: dict) -> bytes:
  """A gzipped tar of MANIFEST then `files`: sorted, times and owners zeroed,
  so the same tree always gives the same bytes."""
  buffer = io.BytesIO()
  with gzip.GzipFile(fileobj=buffer, mode='wb', mtime=0) as zipped:
    with tarfile.open(fileobj=zipped, mode='w',
                      format=tarfile.PAX_FORMAT) as tar:
      entries = [(MANIFEST, ('644', json.dumps(manifest, indent=1).encode()))]
      entries += [(path, _entry(root, path)) for path in files]
      for path, (kind, data) in entries:
        info = tarfile.TarInfo(path)
        info.mtime = info.uid = info.gid = 0
        info.uname = info.gname = ''
        if kind == 'symlink':
          info.type, info.linkname, info.mode = (tarfile.SYMTYPE,
                                                 data.decode(), 0o777)
          tar.addfile(info)
        else:
          info.size, info.mode = len(data), int(kind, 8)
          tar.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def pack(sweep_dir: str, root: str | None = None) -> CodeRef:
  """Packs the source tree at `root` (default: `source_root()`) into
  SWEEP_DIR/code/<hash>.tar.gz, unless that archive exists already (same
  hash, same files; its manifest keeps the commit it was first packed
  from). A `root` that is no project tree is a ValueError."""
  root = root or source_root()
  files = source_files(root)
  for needed in ('pyproject.toml', 'requirements.lock', SETUP_SCRIPT):
    if needed not in files:
      raise config_check.ConfigError(
          f'{needed} is not in the shipped tree of {root} '
          '(tracked or untracked, not ignored): a worker sets '
          'itself up from it')
  code_hash = tree_hash(root, files)
  commit, dirty = git_state(root)
  if '://' not in sweep_dir:  # workers start elsewhere: a local path whole
    sweep_dir = os.path.abspath(sweep_dir)
  archive = epath.Path(sweep_dir) / 'code' / f'{code_hash}.tar.gz'
  if not archive.exists():
    manifest = {'code_hash': code_hash, 'git_commit': commit,
                'git_dirty': dirty, 'files': files}
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.parent / f'.{archive.name}.partial'
    partial.write_bytes(_archive_bytes(root, files, manifest))
    partial.rename(archive)
  deps = [_entry(root, path)[1]
          for path in ('pyproject.toml', 'requirements.lock', SETUP_SCRIPT)]
  with open(os.path.join(root, 'pyproject.toml'), 'rb') as f:
    python_spec = tomllib.load(f)['project']['requires-python']
  return CodeRef(code_hash=code_hash, archive=os.fspath(archive),
                 deps_hash=hashlib.sha256(b'\0'.join(deps)).hexdigest(),
                 python_spec=python_spec, git_commit=commit, git_dirty=dirty)


def read_manifest(root: str) -> dict | None:
  """The CODE_MANIFEST.json of a shipped tree at `root`; None elsewhere."""
  path = os.path.join(root, MANIFEST)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def home_path(path: str) -> str:
  """'~/a b' as shell text that the shell expands: ~/'a b'."""
  return '~/' + shlex.quote(path.removeprefix('~/'))


def _unpack_command(code: CodeRef) -> str:
  """Shell text that leaves the archive unpacked in CODE_DIR/<hash>, with
  .venv linking to the dependency set's venv: into a temporary directory
  first, then renamed into place (`mv -T` fails if another process got
  there first, which is fine)."""
  tree = home_path(f'{CODE_DIR}/{code.code_hash}')
  venv = home_path(f'{VENV_DIR}/{code.deps_hash[:16]}')
  fetch = ('gcloud storage cp' if code.archive.startswith('gs://') else 'cp')
  return (f'mkdir -p {home_path(CODE_DIR)} && {{ test -d {tree} || {{ '
          f'tmp=$(mktemp -d {home_path(CODE_DIR)}/.unpack.XXXXXX) && '
          f'{fetch} {shlex.quote(code.archive)} "$tmp/code.tar.gz" && '
          'mkdir "$tmp/tree" && tar -xzf "$tmp/code.tar.gz" -C "$tmp/tree" '
          f'&& ln -s {venv} "$tmp/tree/.venv" && '
          f'{{ mv -T "$tmp/tree" {tree} 2>/dev/null || test -d {tree}; }}; '
          'status=$?; rm -rf "$tmp"; test $status = 0; }; }')


def setup_command(code: CodeRef,
                  remote_python: str | None = None) -> tuple[str, str]:
  """(shell text, python) for a worker. The text unpacks the shipped tree
  (once per hash), cds into it, builds the venv .venv links to with
  `worker_setup.sh` (once per dependency set) or, with `remote_python`,
  checks that interpreter is there, and exports PYTHONPATH to the tree.
  `python` is a path valid from the tree, to quote as any argument:
  `.venv/bin/python`, or `remote_python` (absolute, or relative to the home
  directory, as ssh starts there). The caller appends ` && {python} -m
  ...`."""
  steps = [_unpack_command(code),
           f'cd {home_path(f"{CODE_DIR}/{code.code_hash}")}']
  if remote_python is None:
    python = '.venv/bin/python'
    venv = home_path(f'{VENV_DIR}/{code.deps_hash[:16]}')
    steps.append(f'bash {SETUP_SCRIPT} "$PWD" {venv} '
                 f'{shlex.quote(code.python_spec)}')
  else:
    # From the tree, ~/.mobilenet_jax/code/<hash>, home is three levels up.
    python = os.path.join('../../..', remote_python.removeprefix('~/'))
    steps.append(f'{{ test -x {shlex.quote(python)} || {{ echo "no '
                 f'interpreter {remote_python} on this worker '
                 '(--remote_python, relative to the home directory)" >&2; '
                 'exit 1; }; }')
  steps.append('export PYTHONPATH="$PWD"')
  return ' && '.join(steps), python
