import asyncio
from unittest import mock

from absl.testing import absltest
import numpy as np
import portpicker
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression import tasks
from fl_compression.learning import algorithms
from tests import tff_test_utils
from tff_programs import backends


def _listen_address(port: int) -> str:
  """The local address of the LISTEN socket on `port`, as the kernel reports it (hex)."""
  for table in ('/proc/net/tcp6', '/proc/net/tcp'):
    with open(table) as f:
      for line in f.readlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(':')
        if int(hex_port, 16) == port and fields[3] == '0A':  # 0A: LISTEN.
          return address
  raise AssertionError(f'nothing listens on port {port}')


def _cpu_seconds(pid: int) -> float:
  times = psutil.Process(pid).cpu_times()
  return times.user + times.system


class WorkerProcessTest(absltest.TestCase):

  def _started(self, **kwargs):
    worker = backends.WorkerProcess(**kwargs).start()
    self.addCleanup(worker.stop)
    backends.connect_to_worker(worker.address, timeout=30, process=worker)
    return worker

  def test_worker_listens_on_loopback_only_by_default(self):
    worker = self._started()
    # ::ffff:127.0.0.1, the IPv4-mapped loopback address, in /proc/net/tcp6 notation.
    self.assertEqual(_listen_address(worker.port), '0000000000000000FFFF00000100007F')

  def test_bind_all_interfaces_is_explicit(self):
    worker = self._started(bind_all_interfaces=True)
    self.assertEqual(_listen_address(worker.port), '0' * 32)

  def test_stop_ends_the_process(self):
    worker = self._started()
    worker.stop()
    self.assertIsNotNone(worker.poll())


class FederatedContextTest(absltest.TestCase):

  def test_local_context_stops_its_worker(self):
    before = {p.pid for p in tff_test_utils.worker_children()}
    with backends.federated_context('local'):
      self.assertLen({p.pid for p in tff_test_utils.worker_children()} - before, 1)
    self.assertEqual({p.pid for p in tff_test_utils.worker_children()}, before)

  def test_the_tests_shared_worker_serves_calls_and_is_replaced_when_it_dies(self):
    @tff.tensorflow.computation
    def seven():
      return tf.constant(7)

    async def body():
      return await tff.program.materialize_value(seven())

    self.assertEqual(tff_test_utils.run_on_local_backend(body), 7)
    (first,) = tff_test_utils.worker_children()
    self.assertEqual(tff_test_utils.run_on_local_backend(body), 7)
    self.assertEqual([p.pid for p in tff_test_utils.worker_children()], [first.pid])
    first.kill()
    first.wait(10)
    self.assertEqual(tff_test_utils.run_on_local_backend(body), 7)
    self.assertNotIn(first.pid, [p.pid for p in tff_test_utils.worker_children()])

  def test_unreachable_worker_is_named(self):
    port = portpicker.pick_unused_port()
    with self.assertRaisesRegex(backends.BackendError, f'127.0.0.1:{port} is unreachable'):
      with backends.federated_context('workers', workers=[f'127.0.0.1:{port}'],
                                      connect_timeout=1):
        pass

  def test_bad_backend_and_addresses(self):
    with self.assertRaisesRegex(ValueError, "unknown backend 'cloud'"):
      with backends.federated_context('cloud'):
        pass
    self.assertEqual(backends.parse_worker_addresses(' a:1, b:2 '), ['a:1', 'b:2'])
    for bad in ('', 'localhost', 'host:port', 'host:0', ':80', 'h:70000'):
      with self.assertRaises(ValueError, msg=bad):
        backends.parse_worker_addresses(bad)

  def test_two_loopback_workers_match_the_local_backend(self):
    task = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=4, examples_per_client=20, batch_size=8))
    process = algorithms.get('fedavg').build(task.model_fn, algorithms.Hyperparameters())
    client_ids = task.train_data.client_ids[:4]

    async def one_round():
      output = process.next(process.initialize(), [task.train_dataset(c) for c in client_ids])
      weights = await tff.program.materialize_value(process.get_model_weights(output.state))
      metrics = await tff.program.materialize_value(output.metrics)
      return weights, metrics

    with backends.federated_context('local'):
      local_weights, local_metrics = asyncio.run(one_round())
    workers = [backends.WorkerProcess().start() for _ in range(2)]
    for worker in workers:
      self.addCleanup(worker.stop)
    busy_before = [_cpu_seconds(w.pid) for w in workers]
    with backends.federated_context('workers', workers=[w.address for w in workers]):
      remote_weights, remote_metrics = asyncio.run(one_round())
    busy = [_cpu_seconds(w.pid) - before for w, before in zip(workers, busy_before)]
    # Both workers trained clients: the round was split across them.
    self.assertTrue(all(seconds > 0.05 for seconds in busy), busy)

    for a, b in zip(local_weights.trainable, remote_weights.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    local_train = local_metrics['client_work']['train']
    remote_train = remote_metrics['client_work']['train']
    self.assertEqual(local_train['num_examples'], remote_train['num_examples'])
    np.testing.assert_allclose(local_train['loss'], remote_train['loss'], rtol=1e-5)
    self.assertEqual(local_metrics['communication'], remote_metrics['communication'])


def _graph_ops(computation: tff.Computation) -> list[str]:
  """Op types of every TensorFlow graph inside `computation`."""
  return [node.op for graph in tff_test_utils.tensorflow_graphs(computation)
          for node in graph.node]


class StaticGrapplerTest(absltest.TestCase):

  def test_compile_keeps_the_graph_and_default_compile_folds_it(self):
    @tff.tensorflow.computation(np.float32)
    def scale(x):
      return x * (tf.constant(2.0) * tf.constant(3.0))

    kept = _graph_ops(backends.compile_without_static_grappler(scale))
    folded = _graph_ops(backends.compiler.desugar_and_transform_to_native(scale))
    # As written: two multiplications; TFF's static pass folds the constant product away.
    self.assertEqual(kept.count('Mul'), 2)
    self.assertEqual(folded.count('Mul'), 1)

  def test_a_round_is_the_same_with_and_without_the_static_pass(self):
    task = tasks.build_task('synthetic_mlp', tasks.TaskOptions(
        num_train_clients=3, examples_per_client=20, batch_size=8))
    process = algorithms.get('fedavg').build(task.model_fn, algorithms.Hyperparameters())
    clients = [task.train_dataset(c) for c in task.train_data.client_ids[:3]]

    async def one_round(start):
      state = process.initialize()
      if start is not None:
        state = process.set_model_weights(state, start)
      output = process.next(state, clients)
      return [await tff.program.materialize_value(process.get_model_weights(s))
              for s in (state, output.state)]

    rounds = {}
    start = None
    compiled = []
    counting = lambda comp: compiled.append(comp) or plain_compile(comp)  # noqa: E731
    plain_compile = backends.compile_without_static_grappler
    for static_grappler in (True, False):
      with mock.patch.object(backends, 'compile_without_static_grappler', counting):
        with backends.federated_context('local', static_grappler=static_grappler):
          start, rounds[static_grappler] = asyncio.run(one_round(start))
      # Only the context without the static pass compiled through it.
      self.assertEqual(bool(compiled), not static_grappler)
    optimized, plain = rounds[True], rounds[False]
    moved = 0.0
    for a, b, w in zip(optimized.trainable, plain.trainable, start.trainable):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      moved += float(np.abs(a - w).sum())
    self.assertGreater(moved, 0.0)


if __name__ == '__main__':
  absltest.main()
