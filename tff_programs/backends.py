"""Execution backends for TFF programs: TFF's C++ runtime in managed worker processes.

`local` starts one TFF `worker_binary` on loopback and drives it as TFF's own local C++ context
does; `workers` connects to several running workers and splits each round's clients over them
with TFF's mergeable-computation context. Unlike TFF's stock local context, every worker this
module starts is stopped when its context closes and is killed by the kernel if this process dies
(PR_SET_PDEATHSIG), and its output goes to a log file, so no worker outlives its program.
"""

import asyncio
import contextlib
import gc
import ctypes
import os
import signal
import subprocess
import tempfile
import time
from typing import Iterator, Optional, Sequence

import grpc
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.environments.tensorflow_backend import tensorflow_tree_transformations
from tensorflow_federated.python.core.impl.computation import computation_impl
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context

BACKENDS = ('local', 'workers')
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
    ('grpc.max_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _GRPC_MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', _GRPC_MAX_MESSAGE_BYTES),
]
_PR_SET_PDEATHSIG = 1
# Whether contexts run TFF's static Grappler pass by default (read when a backend opens); see
# `compile_without_static_grappler`. On unless FLC_TFF_STATIC_GRAPPLER=0, which the test suite
# sets (.bazelrc): its computations run a round or two, where the pass costs more than it saves.
STATIC_GRAPPLER = os.environ.get('FLC_TFF_STATIC_GRAPPLER', '1') != '0'


class BackendError(RuntimeError):
  """A backend could not be started or reached; the message names the address."""


def worker_binary_path() -> str:
  path = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')
  if not os.path.isfile(path):
    raise BackendError(f'TFF worker binary not found at {path}')
  return path


def loopback_bind_library() -> str:
  """Path of the LD_PRELOAD library that keeps the worker on loopback (//tff_programs:loopback)."""
  here = os.path.dirname(os.path.abspath(__file__))
  candidates = [
      os.path.join(here, 'libloopback_bind.so'),  # Bazel runfiles.
      os.path.join(here, '..', 'bazel-bin', 'tff_programs', 'libloopback_bind.so'),
  ]
  for path in candidates:
    if os.path.isfile(path):
      return os.path.abspath(path)
  raise BackendError('libloopback_bind.so not found; run through Bazel, or build it with '
                     '`bazel build //tff_programs:libloopback_bind.so`')


# Resolved once in the parent: after fork, in a process with TF and gRPC threads, the child
# may only make async-signal-safe calls, and dlopen is not one.
_prctl = ctypes.CDLL('libc.so.6', use_errno=True).prctl


def _die_with_parent(parent_pid: int):
  def preexec():
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # The parent died before prctl took effect.
      os._exit(1)
  return preexec


class WorkerProcess:
  """One TFF `worker_binary` child process serving TFF's remote executor over gRPC.

  Bound to 127.0.0.1 unless `bind_all_interfaces` (the service has no TLS and no
  authentication: anyone who reaches the port can run computations).
  """

  def __init__(self, port: Optional[int] = None, *, bind_all_interfaces: bool = False,
               log_path: Optional[str] = None, max_concurrent_computation_calls: int = -1):
    self.port = port or portpicker.pick_unused_port()
    self._bind_all_interfaces = bind_all_interfaces
    self._log_path = log_path
    self._max_calls = max_concurrent_computation_calls
    self._process: Optional[subprocess.Popen] = None

  @property
  def address(self) -> str:
    return f'127.0.0.1:{self.port}'

  @property
  def pid(self) -> Optional[int]:
    return self._process.pid if self._process else None

  @property
  def log_path(self) -> Optional[str]:
    return self._log_path

  def start(self, *, foreground_output: bool = False) -> 'WorkerProcess':
    """Starts the worker; with `foreground_output` its output goes to this process's."""
    env = dict(os.environ)
    if not self._bind_all_interfaces:
      env['LD_PRELOAD'] = loopback_bind_library()
    args = [worker_binary_path(), f'--port={self.port}',
            f'--max_concurrent_computation_calls={self._max_calls}']
    if foreground_output:
      stdout = None
    else:
      if self._log_path is None:
        handle, self._log_path = tempfile.mkstemp(prefix='tff_worker_', suffix='.log')
        os.close(handle)
      stdout = open(self._log_path, 'ab')
    try:
      self._process = subprocess.Popen(
          args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT, env=env,
          preexec_fn=_die_with_parent(os.getpid()), close_fds=True)
    finally:
      if stdout is not None:
        stdout.close()
    return self

  def poll(self) -> Optional[int]:
    return self._process.poll() if self._process else None

  def wait(self) -> int:
    return self._process.wait()

  def stop(self, timeout: float = 10.0) -> None:
    if self._process is None or self._process.poll() is not None:
      return
    self._process.send_signal(signal.SIGINT)
    try:
      self._process.wait(timeout)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()

  def log_tail(self, lines: int = 20) -> str:
    if not self._log_path or not os.path.exists(self._log_path):
      return ''
    with open(self._log_path, errors='replace') as f:
      return ''.join(f.readlines()[-lines:])


def parse_worker_addresses(spec: str) -> list[str]:
  """Parses `host:port,host:port`; raises ValueError naming the bad entry."""
  addresses = [a.strip() for a in spec.split(',') if a.strip()]
  if not addresses:
    raise ValueError('--workers is empty; give host:port[,host:port...]')
  for address in addresses:
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f'--workers entry {address!r} is not host:port')
  return addresses


def connect_to_worker(address: str, timeout: float,
                      process: Optional[WorkerProcess] = None,
                      channels: Optional[list] = None) -> tff.framework.RemoteExecutorGrpcStub:
  """Returns a ready stub for the worker at `address`, or raises BackendError naming it.

  The channel is appended to `channels`, for the caller to close.
  """
  channel = grpc.insecure_channel(address, _GRPC_OPTIONS)
  if channels is not None:
    channels.append(channel)
  try:
    grpc.channel_ready_future(channel).result(timeout=timeout)
  except grpc.FutureTimeoutError:
    channel.close()
    detail = ''
    if process is not None and process.poll() is not None:
      detail = f' (worker exited with code {process.poll()}: {process.log_tail(5).strip()})'
    raise BackendError(f'TFF worker at {address} is unreachable after {timeout:.0f} s{detail}'
                       ) from None
  stub = tff.framework.RemoteExecutorGrpcStub(channel)
  deadline = time.monotonic() + timeout
  while not stub.is_ready:
    if time.monotonic() > deadline:
      raise BackendError(f'TFF worker at {address} did not become ready')
    time.sleep(0.05)
  return stub


def compile_without_static_grappler(comp: tff.Computation) -> tff.Computation:
  """TFF's native compilation (`desugar_and_transform_to_native`) minus its static Grappler pass.

  TFF's compiler runs Grappler in this process on every TensorFlow computation the first time a
  computation is invoked in a context, and then turns Grappler off for the worker's calls. That
  pass is a large share of each first invocation; docs/training.md ("Compiling for the worker")
  has the measurements with and without it, first and steady-state rounds. TFF calls the pass's
  function inlining critical on GPUs (dataset placeholders would be placed there); the backends
  here run on CPUs.
  """
  desugared, _ = tensorflow_tree_transformations.replace_intrinsics_with_bodies(
      comp.to_building_block())
  return compiler.transform_to_native_form(
      computation_impl.ConcreteComputation(computation_proto=desugared.proto,
                                           context_stack=context_stack_impl.context_stack),
      grappler_config=None)


def _async_context(stub, default_num_clients: int,
                   static_grappler: bool) -> tff.framework.AsyncExecutionContext:
  """TFF's async execution context over one remote worker (as TFF's local C++ factory builds)."""

  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    executor = tff.framework.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.AsyncExecutionContext(
      executor_fn=tff.framework.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn),
      compiler_fn=(compiler.desugar_and_transform_to_native if static_grappler
                   else compile_without_static_grappler),
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result)


class _AsyncAdapter(tff.framework.AsyncContext):
  """Presents TFF's (synchronous) mergeable context as the async context programs use."""

  def __init__(self, sync_context: tff.framework.SyncContext):
    self._sync_context = sync_context

  async def invoke(self, comp, arg):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, self._sync_context.invoke, comp, arg)


def _mergeable_context(stubs, default_num_clients: int,
                       static_grappler: bool) -> tff.framework.AsyncContext:
  contexts = [_async_context(stub, default_num_clients, static_grappler) for stub in stubs]
  mergeable = tff.framework.MergeableCompExecutionContext(
      async_contexts=contexts,
      compiler_fn=mergeable_comp_compiler.compile_to_mergeable_comp_form,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result)
  return _AsyncAdapter(mergeable)


def disable_unmanaged_default_context() -> None:
  """Replaces the context TFF installs at import, which would start a worker nobody stops.

  Afterwards a computation invoked outside `federated_context` fails at once instead of
  silently starting an unmanaged `worker_binary`.
  """
  tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())
  # Collected now, while the modules its finalizer uses still exist: at interpreter exit the
  # replaced context's service manager would print an AttributeError from `__del__`.
  gc.collect()


@contextlib.contextmanager
def federated_context(backend: str, **kwargs) -> Iterator[tff.program.NativeFederatedContext]:
  """Yields `open_backend(backend, **kwargs)`'s context, installed as TFF's default context."""
  with open_backend(backend, **kwargs) as context:
    with tff.framework.get_context_stack().install(context):
      yield context


@contextlib.contextmanager
def open_backend(backend: str, *, workers: Sequence[str] = (),
                 default_num_clients: int = 0, connect_timeout: float = 30.0,
                 log_dir: Optional[str] = None,
                 static_grappler: Optional[bool] = None,
                 ) -> Iterator[tff.program.NativeFederatedContext]:
  """Yields a `tff.program.NativeFederatedContext` over `backend`, not installed (callers that
  share one backend across several uses install it around each; `federated_context` does it
  once). Its workers and channels are closed on exit.

  Args:
    backend: `local` (a worker process started here and stopped on exit) or `workers`
      (running workers at `workers`, each round's clients split across them).
    workers: `host:port` addresses for the `workers` backend.
    default_num_clients: CLIENTS cardinality for computations that cannot infer it.
    connect_timeout: seconds to wait for each worker.
    log_dir: where the local worker writes its log (a temporary file if None).
    static_grappler: True: TFF's own compilation, static Grappler pass included; False:
      `compile_without_static_grappler`; None: `STATIC_GRAPPLER`.
  """
  if static_grappler is None:
    static_grappler = STATIC_GRAPPLER
  if backend not in BACKENDS:
    raise ValueError(f'unknown backend {backend!r}; known: {", ".join(BACKENDS)}')
  disable_unmanaged_default_context()
  started: list[WorkerProcess] = []
  channels: list[grpc.Channel] = []
  try:
    if backend == 'local':
      log_path = os.path.join(log_dir, 'tff_worker.log') if log_dir else None
      worker = WorkerProcess(log_path=log_path).start()
      started.append(worker)
      stub = connect_to_worker(worker.address, connect_timeout, worker, channels)
      async_context = _async_context(stub, default_num_clients, static_grappler)
    else:
      if not workers:
        raise ValueError('the workers backend needs --workers=host:port[,host:port...]')
      stubs = [connect_to_worker(address, connect_timeout, channels=channels)
               for address in workers]
      async_context = _mergeable_context(stubs, default_num_clients, static_grappler)
    yield tff.program.NativeFederatedContext(async_context)
  finally:
    for channel in channels:
      channel.close()
    for worker in started:
      worker.stop()
