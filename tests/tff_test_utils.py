"""Test helpers: run async TFF program code on a managed local backend."""

import asyncio
import atexit
import contextlib
import functools
import io
import os
import re
import subprocess
import sys
from typing import Any, Awaitable, Callable

import psutil
import tensorflow_federated as tff

from tff_programs import backends

# Tests never use the worker TFF's import-time default context would start and leave behind.
backends.disable_unmanaged_default_context()


_shared_backend: list[tuple[contextlib.ExitStack, tff.program.NativeFederatedContext]] = []


def run_on_local_backend(body: Callable[[], Awaitable[Any]]) -> Any:
  """Runs `body()` in this test process's local federated context, installed for the call.

  The context's worker starts at the first call and serves every later one (starting a worker
  costs about 2 s per call); it is stopped when the process exits, and replaced if it died (a
  dead worker would make TFF retry every later call until the test's timeout).
  """
  if _shared_backend and not worker_children():
    _shared_backend.pop()[0].close()
  if not _shared_backend:
    stack = contextlib.ExitStack()
    _shared_backend.append((stack, stack.enter_context(backends.open_backend('local'))))
    atexit.register(stack.close)
  with tff.framework.get_context_stack().install(_shared_backend[0][1]):
    return asyncio.run(body())


def tensorflow_graphs(computation) -> list:
  """Every TensorFlow `GraphDef` inside `computation` (a `tff.Computation`), in proto order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graphs = []

  def walk(message):
    for field, value in message.ListFields():
      if field.message_type is None:
        continue
      for item in (value if field.label == field.LABEL_REPEATED else [value]):
        if field.name == 'tensorflow':
          graph = tf.compat.v1.GraphDef()
          item.graph_def.Unpack(graph)
          graphs.append(graph)
        else:
          walk(item)

  walk(tff.framework.ConcreteComputation.get_proto(computation))
  return graphs


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


def run_program(name: str, *flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs //tff_programs:<name> with `flags` as a user would; output captured as text."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  return subprocess.run(program_command(name) + list(flags), capture_output=True, text=True,
                        env=env, timeout=timeout, check=False)


def call_program(module, *flags: str) -> subprocess.CompletedProcess:
  """Runs program `module`'s `main` (`program_main.make_main(module.run)`) in this process on
  `flags`, with its output captured, and returns what `run_program` would.

  For bad-input checks, which fail before any computation is built: a child process spends
  several seconds importing TensorFlow and TFF per case, this one call. Flag values are restored
  after the call; a flag parsing error or usage error is exit status 1 with absl's message, as
  from `app.run`. Unlike a child process: absl log lines are not captured, there is no timeout
  (a case that does not fail runs the whole program here), and `main`'s quieter TF logging
  stays set. Only the launcher around `main` is left out, so keep one `run_program` case per
  program.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from tff_programs import program_main  # pylint: disable=g-import-not-at-top
  argv = [module.__name__, *flags]
  stdout, stderr = io.StringIO(), io.StringIO()
  with flagsaver.flagsaver(), contextlib.redirect_stdout(stdout), \
      contextlib.redirect_stderr(stderr):
    try:
      program_main.make_main(module.run)(absl_flags.FLAGS(argv))
      code = 0
    except (absl_flags.Error, app.UsageError) as e:
      print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
      code = 1
    except SystemExit as e:  # As the interpreter turns `sys.exit(x)` into a status.
      code = e.code if isinstance(e.code, int) else int(e.code is not None)
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
  return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def assert_bad_input(test, module, cases, *common: str,
                     launcher: Callable[..., subprocess.CompletedProcess] | None = None
                     ) -> None:
  """Each `(flags, message)` of `cases`: program `module` given `common` and `flags` fails with
  a one-line error containing `message` (`assert_one_line_error`).

  The first case runs the program as a user does (`launcher`, default `run_program` of the
  module's name), so its launcher and exit status are covered; the others call its `main` in
  this process (`call_program`).
  """
  launcher = launcher or functools.partial(run_program, module.__name__.rpartition('.')[2])
  for i, (flags, message) in enumerate(cases):
    run = launcher if i == 0 else functools.partial(call_program, module)
    assert_one_line_error(test, run(*common, *flags), message, flags)


def assert_one_line_error(test, result: subprocess.CompletedProcess, message: "str | re.Pattern",
                          context: Any = None) -> None:
  """A program's answer to bad input: exit status 2, no traceback, and a last stderr line
  `error: ...` that contains `message` (or matches it, a compiled pattern)."""
  test.assertEqual(result.returncode, 2, (context, result.stderr[-2000:]))
  test.assertNotIn('Traceback', result.stderr, context)
  last_line = result.stderr.strip().splitlines()[-1]
  test.assertTrue(last_line.startswith('error: '), (context, last_line))
  if isinstance(message, re.Pattern):
    test.assertRegex(last_line, message, context)
  else:
    test.assertIn(message, last_line, context)


def repo_path(relative: str) -> str:
  """A path of the repository (from the test's runfiles under `bazel test`)."""
  runfiles = os.environ.get('TEST_SRCDIR')
  if runfiles:
    return os.path.join(runfiles, 'flc', relative)
  return os.path.join(os.path.dirname(__file__), '..', relative)


def save_small_speech_model(model_dir: str, vocab_size: int = 29, num_blocks: int = 1) -> dict:
  """Saves a Conformer-CTC of `num_blocks` blocks of dimension 32 at its initialization (one:
  the smallest model that still has every kind of layer) and returns its config: what
  benchmark tests start their runs from, where the shipped `tiny` model would only make them
  slower."""
  from fl_compression.models import asr  # pylint: disable=g-import-not-at-top
  from fl_compression.models import checkpoint  # pylint: disable=g-import-not-at-top
  from fl_compression.models import registry  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top

  config = asr.tiny_config(vocab_size)
  config['encoder'].update(num_blocks=num_blocks, model_dim=32, num_heads=4, num_groups=4)
  model = registry.build_keras_model(config)
  checkpoint.save_model(model_dir, config, tff.learning.models.ModelWeights(
      [v.numpy() for v in model.trainable_variables],
      [v.numpy() for v in model.non_trainable_variables]))
  return config
