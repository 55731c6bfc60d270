"""Composes learning processes from TFF blocks and adds communication accounting.

Every algorithm of the project is a `tff.learning.templates.compose_learning_process` of a
distributor, a client work, an aggregator and a finalizer. `compose` adds one measurement group,
`communication`, with the bytes each client receives and sends, sized from the block types.
"""

import collections

import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.learning import accounting


def compose(initial_model_weights_fn: tff.Computation,
            distributor: tff.templates.MeasuredProcess,
            client_work: tff.learning.templates.ClientWorkProcess,
            aggregator: tff.templates.AggregationProcess,
            finalizer: tff.learning.templates.FinalizerProcess,
            *, aggregator_encodes: bool = False, measured_bytes_up: bool = False
            ) -> tff.learning.templates.LearningProcess:
  """Returns the composed learning process with a `communication` measurement.

  The type signature of `next` is that of `compose_learning_process`, except that `metrics`
  gains `communication: <client_bytes_down=int64, client_bytes_up=int64>@SERVER`. Bytes up are
  the client work's result, or with `aggregator_encodes` (an aggregator that encodes updates
  on the clients), what the aggregator's intrinsics take from each client. With
  `measured_bytes_up` (an upload whose size depends on its values, so its type has unknown
  dimensions) they are the client work's own measurement `client_bytes_up`: the mean over the
  round's clients of the bytes of the buffers each sent.
  """
  process = tff.learning.templates.compose_learning_process(
      initial_model_weights_fn, distributor, client_work, aggregator, finalizer)
  if measured_bytes_up:
    traffic = collections.OrderedDict(client_bytes_down=accounting.type_nbytes(
        distributor.next.type_signature.result.result))
  else:
    traffic = accounting.client_traffic(distributor, client_work,
                                        aggregator if aggregator_encodes else None)
  state_type, data_type = process.next.type_signature.parameter

  @tff.tensorflow.computation
  def traffic_constants():
    return collections.OrderedDict(
        (name, tf.constant(value, tf.int64)) for name, value in traffic.items())

  @tff.tensorflow.computation(traffic_constants.type_signature.result, tf.float32)
  def with_measured_bytes_up(constants, bytes_up):
    return collections.OrderedDict(
        client_bytes_down=constants['client_bytes_down'],
        client_bytes_up=tf.cast(tf.round(bytes_up), tf.int64))

  @tff.federated_computation(state_type, data_type)
  def next_fn(state, client_data):
    output = process.next(state, client_data)
    metrics = output.metrics
    measurements = collections.OrderedDict(
        (name, getattr(metrics, name)) for name in _metric_names(process))
    communication = tff.federated_eval(traffic_constants, tff.SERVER)
    if measured_bytes_up:
      communication = tff.federated_map(with_measured_bytes_up, tff.federated_zip(
          (communication, metrics.client_work.client_bytes_up)))
    measurements['communication'] = communication
    return tff.learning.templates.LearningProcessOutput(
        state=output.state, metrics=tff.federated_zip(measurements))

  return ComposedLearningProcess(
      process.initialize, next_fn, process.get_model_weights, process.set_model_weights,
      blocks=dict(distributor=distributor, client_work=client_work, aggregator=aggregator,
                  finalizer=finalizer))


class ComposedLearningProcess(tff.learning.templates.LearningProcess):
  """A composed learning process that keeps its four blocks, so that a benchmark can run and
  time them one by one (`fl_compression.benchmarks.round_phases`)."""

  def __init__(self, initialize_fn, next_fn, get_model_weights, set_model_weights, *,
               blocks: dict[str, tff.templates.MeasuredProcess]):
    super().__init__(initialize_fn, next_fn, get_model_weights, set_model_weights)
    self.blocks = blocks


def _metric_names(process: tff.learning.templates.LearningProcess) -> list[str]:
  metrics_type = process.next.type_signature.result.metrics.member
  return [name for name, _ in tff.structure.iter_elements(metrics_type)]
