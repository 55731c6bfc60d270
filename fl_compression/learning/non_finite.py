"""Dropping clients whose update is not finite, in every learning process.

A client whose training diverged (NaN or Inf in its update) must not move the server model: its
update is zeroed with weight 0 on the client (TFF's model-delta client work does this; the
compressed client work checks its weights before each requantization, where a NaN is still
visible), the round's aggregate is the mean of the other clients, and a round in which every
client was dropped has a non-finite (0/0) aggregate that the finalizers reject, leaving the
server model unchanged. The number of dropped clients is released as
`client_work/non_finite_clients`.
"""

import collections
from typing import Sequence

import tensorflow as tf
import tensorflow_federated as tff


def all_finite(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  """A scalar bool: every entry of every tensor is finite."""
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def keep_if(finite: tf.Tensor, new, old):
  """`new` where `finite`, else `old` (structures of tensors of equal shapes)."""
  return tf.nest.map_structure(lambda n, o: tf.where(finite, n, o), new, old)


def with_non_finite_count(client_work: tff.learning.templates.ClientWorkProcess
                          ) -> tff.learning.templates.ClientWorkProcess:
  """`client_work` (TFF's model-delta client work) with `non_finite_clients` added to its
  measurements: the clients whose update weight is 0, which that client work gives exactly the
  clients whose update was not finite (and clients with no examples, which the programs never
  sample)."""
  state_type, weights_type, data_type = client_work.next.type_signature.parameter
  result_type = client_work.next.type_signature.result.result.member

  @tff.tensorflow.computation(result_type)
  def dropped(result):
    return tf.cast(tf.equal(result.update_weight, 0.0), tf.int32)

  @tff.federated_computation(state_type, weights_type, data_type)
  def next_fn(state, weights, data):
    output = client_work.next(state, weights, data)
    measurements_type = output.measurements.type_signature.member
    measurements = collections.OrderedDict(
        (name, output.measurements[name])
        for name, _ in tff.structure.iter_elements(measurements_type))
    measurements['non_finite_clients'] = tff.federated_sum(
        tff.federated_map(dropped, output.result))
    return tff.templates.MeasuredProcessOutput(
        state=output.state, result=output.result, measurements=tff.federated_zip(measurements))

  return tff.learning.templates.ClientWorkProcess(client_work.initialize, next_fn)
