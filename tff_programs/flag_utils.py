"""Flag helpers shared by the programs: paths under `bazel run` and one-line flag errors."""

import math
import os


class FlagError(ValueError):
  """A flag has a bad value; the message names the flag."""


def resolve_path(path: str) -> str:
  """Makes `path` absolute against the directory `bazel run` was started from."""
  base = os.environ.get('BUILD_WORKING_DIRECTORY', os.getcwd())
  return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def require_positive(flag_name: str, value) -> None:
  """A finite number above 0 (NaN and infinity are refused: they train silently wrong)."""
  if value is None or not (value > 0 and math.isfinite(value)):
    raise FlagError(f'--{flag_name} must be positive and finite, got {value}')


def check_writable_dir(flag_name: str, path: str) -> str:
  """Checks that `path` is a writable directory or can be created as one, creating nothing
  (a run that fails a later check leaves no directory behind)."""
  existing = path
  while not os.path.exists(existing):
    parent = os.path.dirname(existing)
    if parent == existing:
      break
    existing = parent
  if existing != path and not os.path.isdir(existing):
    raise FlagError(f'--{flag_name}={path} cannot be created: {existing} is not a directory')
  if existing == path and not os.path.isdir(path):
    raise FlagError(f'--{flag_name}={path} is not a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise FlagError(f'--{flag_name}={path} is not writable' if existing == path else
                    f'--{flag_name}={path} cannot be created: {existing} is not writable')
  return path


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
