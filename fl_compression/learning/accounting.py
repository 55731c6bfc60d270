"""Bytes that cross the placement boundary, computed from TFF type signatures.

Every learning process reports these as measurements; they are the denominators of every
compression comparison, so they come from the types of the values actually sent, never a formula.
"""

import collections
from typing import Optional

import numpy as np
import tensorflow_federated as tff


def type_nbytes(type_spec: tff.Type) -> int:
  """Returns the bytes of one value of `type_spec` (all leaves, dtype-exact).

  Federated types count one member (the value one participant holds or sends). Strings,
  sequences and tensors of unknown shape have no fixed size and are rejected.
  """
  if isinstance(type_spec, tff.FederatedType):
    return type_nbytes(type_spec.member)
  if isinstance(type_spec, tff.StructType):
    return sum(type_nbytes(member) for _, member in tff.structure.iter_elements(type_spec))
  if isinstance(type_spec, tff.TensorType):
    dtype = np.dtype(type_spec.dtype)
    if dtype.kind in ('O', 'S', 'U'):
      raise ValueError(f'cannot size a string tensor of type {type_spec}')
    shape = tuple(type_spec.shape) if type_spec.shape is not None else None
    if shape is None or any(dim is None for dim in shape):
      raise ValueError(f'cannot size a tensor of unknown shape {type_spec}')
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raise TypeError(f'cannot size a value of type {type_spec}')


def client_traffic(distributor: tff.templates.MeasuredProcess,
                   client_work: tff.learning.templates.ClientWorkProcess,
                   aggregator: Optional[tff.templates.AggregationProcess] = None
                   ) -> collections.OrderedDict:
  """Bytes one client receives (distributor output) and sends: the client work result, or,
  with `aggregator` (one that encodes on the clients), what its aggregations take from each
  client (`aggregated_client_bytes`)."""
  received = distributor.next.type_signature.result.result
  sent = (type_nbytes(client_work.next.type_signature.result.result) if aggregator is None
          else aggregated_client_bytes(aggregator))
  return collections.OrderedDict(
      client_bytes_down=type_nbytes(received),
      client_bytes_up=sent,
  )


def aggregated_client_bytes(aggregator: tff.templates.AggregationProcess) -> int:
  """Bytes one client contributes to the aggregations of `aggregator.next`.

  Walks the computation for every intrinsic that takes values placed at CLIENTS to the
  SERVER (federated_aggregate, federated_sum, federated_mean, secure sums, ...) and sums one
  member of each CLIENTS-placed operand: for an aggregator that encodes on the clients
  (`tff.learning.compression_aggregator`), the encoded tensors as they leave the client.
  """
  calls = []

  def visit(comp):
    if (isinstance(comp, tff.framework.Call) and isinstance(comp.function, tff.framework.Intrinsic)
        and isinstance(comp.type_signature, tff.FederatedType)
        and comp.type_signature.placement == tff.SERVER and comp.argument is not None):
      calls.append(comp.argument.type_signature)
    return comp, False

  tff.framework.transform_preorder(aggregator.next.to_building_block(), visit)

  def client_operands(type_spec):
    if isinstance(type_spec, tff.FederatedType):
      return [type_spec] if type_spec.placement == tff.CLIENTS else []
    if isinstance(type_spec, tff.StructType):
      return [t for _, member in tff.structure.iter_elements(type_spec)
              for t in client_operands(member)]
    return []

  return sum(type_nbytes(t) for argument in calls for t in client_operands(argument))
