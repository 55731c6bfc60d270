"""Generated non-IID classification clients: a small stand-in task that needs no download.

Every client draws features around its own mean and labels them with one shared linear
teacher, so clients differ in their input and label distributions (non-IID) yet share a task.
"""

import collections

import numpy as np
import tensorflow_federated as tff


def make_client_data(num_clients: int, examples_per_client: int, *, input_dim: int = 16,
                     num_classes: int = 4, seed: int = 0, id_prefix: str = 'client'
                     ) -> tff.simulation.datasets.ClientData:
  """Returns `num_clients` clients of `examples_per_client` (features, label) examples each.

  The teacher depends only on `seed` and the shapes, so train and held-out client sets made
  with the same seed and different `id_prefix` share the task but not the clients.
  """
  if num_clients <= 0 or examples_per_client <= 0:
    raise ValueError('num_clients and examples_per_client must be positive, got '
                     f'{num_clients} and {examples_per_client}')
  teacher = np.random.default_rng([seed, 0]).normal(size=(input_dim, num_classes))
  client_rng = np.random.default_rng([seed, sum(map(ord, id_prefix))])
  tensor_slices = collections.OrderedDict()
  for i in range(num_clients):
    center = client_rng.normal(scale=1.0, size=input_dim)
    features = center + client_rng.normal(size=(examples_per_client, input_dim))
    scores = features @ teacher + 0.5 * client_rng.normal(size=(examples_per_client, num_classes))
    tensor_slices[f'{id_prefix}_{i:03d}'] = collections.OrderedDict(
        x=features.astype(np.float32), y=np.argmax(scores, axis=1).astype(np.int32))
  return tff.simulation.datasets.TestClientData(tensor_slices)
