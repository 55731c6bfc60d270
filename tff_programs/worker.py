"""Runs one TFF worker service (TFF's C++ `worker_binary`) for `--backend=workers`.

  bazel run //tff_programs:worker -- --port=10001

The service speaks gRPC without TLS or authentication. It listens on 127.0.0.1 only unless
--bind_all_interfaces is given; do that only on a private, trusted network.
"""

import signal
import sys

from absl import app
from absl import flags

from tff_programs import backends

_PORT = flags.DEFINE_integer('port', 10001, 'TCP port to listen on.')
_BIND_ALL_INTERFACES = flags.DEFINE_bool(
    'bind_all_interfaces', False,
    'Listen on every network interface instead of 127.0.0.1. The service has no TLS and no '
    'authentication: anyone who reaches the port can run code in it.')
_MAX_CALLS = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Maximum parallel calls of one computation (limits memory); non-positive: no limit.')


def _raise_keyboard_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  backends.disable_unmanaged_default_context()
  if not 0 < _PORT.value < 65536:
    print(f'error: --port must be in 1..65535, got {_PORT.value}', file=sys.stderr)
    sys.exit(2)
  worker = backends.WorkerProcess(
      _PORT.value, bind_all_interfaces=_BIND_ALL_INTERFACES.value,
      max_concurrent_computation_calls=_MAX_CALLS.value)
  try:
    worker.start(foreground_output=True)
  except backends.BackendError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  where = f'all interfaces, port {_PORT.value}' if _BIND_ALL_INTERFACES.value else worker.address
  print(f'TFF worker serving on {where} (pid {worker.pid}); Ctrl-C stops it.', flush=True)

  # SIGTERM stops the worker as Ctrl-C does. Stopping happens here, not in a signal handler,
  # because a handler would interrupt Popen.wait() while it holds the process's wait lock.
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  try:
    code = worker.wait()
  except KeyboardInterrupt:
    worker.stop()
    print('TFF worker stopped.', flush=True)
    sys.exit(130)
  if code:
    print(f'error: the worker on port {_PORT.value} exited with code {code} '
          '(is the port in use?)', file=sys.stderr)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
