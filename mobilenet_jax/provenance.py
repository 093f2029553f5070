"""What a training ran on: WORKDIR/provenance.json, written at start-up.

Fields: the code (`code_hash` as `sweep_code.tree_hash`, full `git_commit`,
`git_dirty`: from the manifest of a tree a sweep shipped, else from the tree
the code runs from and its git HEAD, null where there is none; `source`, the
folder it runs from), the versions of the packages whose changes move
results (`PACKAGES`, null when not installed), the devices (kind, count,
processes), the machine (`vm` and `chips` from the variables a sweep's
launcher sets, MOBILENET_JAX_VM and MOBILENET_JAX_CHIPS, and the host name),
the Python version and the start time. A resumed run keeps the
records of its earlier starts under `earlier_starts`, oldest first.
"""

import importlib.metadata
import os
import platform
import socket
import time

from etils import epath
import jax

from mobilenet_jax import sweep_code
from mobilenet_jax import sweep_runs

PROVENANCE_FILE = 'provenance.json'
# Package -> the distributions that provide it (TensorFlow is installed as
# tensorflow-cpu here, as tensorflow elsewhere).
PACKAGES = {
    'jax': ('jax',),
    'jaxlib': ('jaxlib',),
    'libtpu': ('libtpu', 'libtpu-nightly'),
    'flax': ('flax',),
    'optax': ('optax',),
    'orbax-checkpoint': ('orbax-checkpoint',),
    'tensorflow': ('tensorflow', 'tensorflow-cpu', 'tensorflow-tpu'),
}


def package_versions() -> dict[str, str | None]:
  """{package: installed version, or None} for each of PACKAGES."""
  versions = {}
  for package, distributions in PACKAGES.items():
    versions[package] = None
    for distribution in distributions:
      try:
        versions[package] = importlib.metadata.version(distribution)
        break
      except importlib.metadata.PackageNotFoundError:
        pass
  return versions


def code_identity(root: str | None = None) -> dict:
  """{'code_hash', 'git_commit', 'git_dirty'} of the tree at `root` (default:
  the one `mobilenet_jax` runs from): a shipped tree's manifest, else the
  files `sweep_code.source_files` would ship and git's HEAD (null without
  git), else nulls (an installed package)."""
  root = root or sweep_code.source_root()
  manifest = sweep_code.read_manifest(root)
  if manifest is not None:
    return {key: manifest[key]
            for key in ('code_hash', 'git_commit', 'git_dirty')}
  try:
    files = sweep_code.source_files(root)
  except ValueError:
    return {'code_hash': None, 'git_commit': None, 'git_dirty': None}
  commit, dirty = sweep_code.git_state(root)
  return {'code_hash': sweep_code.tree_hash(root, files),
          'git_commit': commit, 'git_dirty': dirty}


def collect() -> dict:
  """This process's provenance record (module docstring)."""
  devices = jax.devices()
  return {
      **code_identity(),
      'source': sweep_code.source_root(),
      'packages': package_versions(),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'process_count': jax.process_count(),
      'vm': os.environ.get('MOBILENET_JAX_VM'),
      'chips': os.environ.get('MOBILENET_JAX_CHIPS'),
      'host': socket.gethostname(),
      'python': platform.python_version(),
      'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  }


def record(workdir: str) -> None:
  """Writes WORKDIR/provenance.json (process 0 only), keeping what an
  earlier start of this run wrote under `earlier_starts`."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / PROVENANCE_FILE
  current = collect()
  previous = sweep_runs.read_json(path)
  if previous is not None:
    current['earlier_starts'] = (previous.pop('earlier_starts', []) +
                                 [previous])
  sweep_runs.write_json(path, current)
