"""Client and server optimizers by name, as `tff.learning.optimizers` objects."""

import math

import tensorflow_federated as tff

OPTIMIZERS = ('sgd', 'sgdm', 'adam')


def build_optimizer(name: str, learning_rate: float) -> tff.learning.optimizers.Optimizer:
  """Returns the named optimizer; `sgdm` is SGD with momentum 0.9."""
  if not (learning_rate > 0 and math.isfinite(learning_rate)):
    raise ValueError(f'learning rate must be positive and finite, got {learning_rate}')
  if name == 'sgd':
    return tff.learning.optimizers.build_sgdm(learning_rate=learning_rate)
  if name == 'sgdm':
    return tff.learning.optimizers.build_sgdm(learning_rate=learning_rate, momentum=0.9)
  if name == 'adam':
    return tff.learning.optimizers.build_adam(learning_rate=learning_rate)
  raise ValueError(f'unknown optimizer {name!r}; known: {", ".join(OPTIMIZERS)}')
