"""Test helpers: run async TFF program code on a managed local backend."""

import asyncio
import os
import sys
from typing import Any, Awaitable, Callable

import psutil

from tff_programs import backends

# Tests never use the worker TFF's import-time default context would start and leave behind.
backends.disable_unmanaged_default_context()


def run_on_local_backend(body: Callable[[], Awaitable[Any]]) -> Any:
  """Runs `body()` inside a local federated context; the worker is stopped afterwards."""
  with backends.federated_context('local'):
    return asyncio.run(body())


def worker_children() -> list[psutil.Process]:
  """The `worker_binary` processes descended from this process."""
  return [p for p in psutil.Process().children(recursive=True)
          if 'worker_binary' in ' '.join(_cmdline(p))]


def processes_with_env(marker: str) -> list[int]:
  """PIDs of live processes whose environment contains `marker` (e.g. `KEY=value`)."""
  found = []
  for process in psutil.process_iter():
    try:
      if marker in ('\0'.join(f'{k}={v}' for k, v in process.environ().items())):
        found.append(process.pid)
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
      continue
  return found


def _cmdline(process: psutil.Process) -> list[str]:
  try:
    return process.cmdline()
  except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
    return []


def program_command(name: str) -> list[str]:
  """The command that runs //tff_programs:<name> (its Bazel launcher under `bazel test`)."""
  runfiles = os.environ.get('TEST_SRCDIR')
  if runfiles:
    return [os.path.join(runfiles, 'flc', 'tff_programs', name)]
  return [sys.executable, os.path.join(os.path.dirname(__file__), '..', 'tff_programs',
                                       f'{name}.py')]


def repo_path(relative: str) -> str:
  """A path of the repository (from the test's runfiles under `bazel test`)."""
  runfiles = os.environ.get('TEST_SRCDIR')
  if runfiles:
    return os.path.join(runfiles, 'flc', relative)
  return os.path.join(os.path.dirname(__file__), '..', relative)
