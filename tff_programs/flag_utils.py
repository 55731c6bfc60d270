"""Flag helpers shared by the programs: paths under `bazel run` and one-line flag errors."""

import os


class FlagError(ValueError):
  """A flag has a bad value; the message names the flag."""


def resolve_path(path: str) -> str:
  """Makes `path` absolute against the directory `bazel run` was started from."""
  base = os.environ.get('BUILD_WORKING_DIRECTORY', os.getcwd())
  return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def require_positive(flag_name: str, value) -> None:
  if value is None or value <= 0:
    raise FlagError(f'--{flag_name} must be positive, got {value}')


def ensure_writable_dir(flag_name: str, path: str) -> str:
  """Creates `path` if needed and checks it is writable, without touching existing files."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise FlagError(f'--{flag_name}={path} cannot be created: {e.strerror}') from None
  if not os.path.isdir(path):
    raise FlagError(f'--{flag_name}={path} is not a directory')
  if not os.access(path, os.W_OK | os.X_OK):
    raise FlagError(f'--{flag_name}={path} is not writable')
  return path
