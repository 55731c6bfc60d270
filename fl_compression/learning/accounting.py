"""Bytes that cross the placement boundary, computed from TFF type signatures.

Every learning process reports these as measurements; they are the denominators of every
compression comparison, so they come from the types of the values actually sent, never a formula.
"""

import collections

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
                   client_work: tff.learning.templates.ClientWorkProcess
                   ) -> collections.OrderedDict:
  """Bytes one client receives (distributor output) and sends (client work result)."""
  received = distributor.next.type_signature.result.result
  sent = client_work.next.type_signature.result.result
  return collections.OrderedDict(
      client_bytes_down=type_nbytes(received),
      client_bytes_up=type_nbytes(sent),
  )
