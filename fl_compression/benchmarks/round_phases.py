"""Where a round's time goes: a composed learning process timed by growing prefixes.

A round of `composition.compose`'s process is distributor -> client work -> aggregator ->
finalizer inside one TFF computation, and TFF's runtime does not return values placed at the
clients from a computation, so the blocks cannot be invoked one by one. Instead four
computations each run a longer prefix of the round on the same state and clients (distributor
alone; then with the client work; then with the aggregator; the whole round), each ending in a
small server-placed value that depends on everything the prefix computed; a phase's time is the
difference between its prefix and the previous one. For federated pruning the distributor is
the server's importance scores, masks, shrink and the broadcast, the finalizer the expansion and
the server update.
"""

import time
from typing import Any, Sequence

import tensorflow as tf
import tensorflow_federated as tff

PHASES = ('distributor', 'client_work', 'aggregator', 'finalizer')


def _checksum(value_type):
  """A TF computation summing every entry of a value of `value_type` (one float32)."""

  @tff.tensorflow.computation(value_type)
  def checksum(value):
    return tf.add_n([tf.reduce_sum(tf.cast(leaf, tf.float32))
                     for leaf in tf.nest.flatten(value)] + [tf.constant(0.0)])

  return checksum


def prefixes(process) -> dict[str, tff.Computation]:
  """The prefix computations of a `ComposedLearningProcess` (see the module docstring)."""
  blocks = process.blocks
  state_type, data_type = process.next.type_signature.parameter
  broadcast_type = blocks['distributor'].next.type_signature.result.result.member
  result_type = blocks['client_work'].next.type_signature.result.result.member
  broadcast_sum, result_sum = _checksum(broadcast_type), _checksum(result_type)

  @tff.federated_computation(state_type, data_type)
  def distributor(state, data):
    del data
    distributed = blocks['distributor'].next(state.distributor, state.global_model_weights)
    return tff.federated_sum(tff.federated_map(broadcast_sum, distributed.result))

  def _client_results(state, data):
    distributed = blocks['distributor'].next(state.distributor, state.global_model_weights)
    return blocks['client_work'].next(state.client_work, distributed.result, data)

  @tff.federated_computation(state_type, data_type)
  def client_work(state, data):
    work = _client_results(state, data)
    return tff.federated_sum(tff.federated_map(result_sum, work.result))

  @tff.federated_computation(state_type, data_type)
  def aggregator(state, data):
    work = _client_results(state, data)
    return blocks['aggregator'].next(state.aggregator, work.result.update,
                                     work.result.update_weight).result

  return {'distributor': distributor, 'client_work': client_work, 'aggregator': aggregator,
          'finalizer': process.next}


async def time_round(process, state, client_datasets: Sequence[Any], repeats: int = 1
                     ) -> dict[str, float]:
  """Seconds of each phase of one round of `process` from `state` (each prefix run once
  untimed, then `repeats` times, the median kept), and of the whole round (`round`). A phase
  much shorter than the noise of the round can come out negative; it is reported as measured."""
  totals = {}
  for name, computation in prefixes(process).items():
    samples = []
    for attempt in range(repeats + 1):
      started = time.monotonic()
      output = computation(state, list(client_datasets))
      await tff.program.materialize_value(output.metrics if name == 'finalizer' else output)
      if attempt:
        samples.append(time.monotonic() - started)
    totals[name] = sorted(samples)[len(samples) // 2]
  times, previous = {}, 0.0
  for name in PHASES:
    times[name] = totals[name] - previous
    previous = totals[name]
  times['round'] = totals['finalizer']
  return times
