"""The registry of learning algorithms that `--algorithm` selects.

A variant registers itself here once, with a builder that takes the model function and the
common hyperparameters; the training program, tests and benchmarks look it up by name.
"""

import dataclasses
from typing import Callable

import tensorflow_federated as tff

from fl_compression.learning import fedavg
from fl_compression.learning import optimizers


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  client_optimizer: str = 'sgd'
  client_learning_rate: float = 0.1
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0


Builder = Callable[[fedavg.ModelFn, Hyperparameters], tff.learning.templates.LearningProcess]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  name: str
  description: str
  build: Builder


_REGISTRY: dict[str, Algorithm] = {}


def register(name: str, description: str) -> Callable[[Builder], Builder]:
  """Decorator that registers `builder` under `name`."""

  def decorate(builder: Builder) -> Builder:
    if name in _REGISTRY:
      raise ValueError(f'algorithm {name!r} is registered twice')
    _REGISTRY[name] = Algorithm(name, description, builder)
    return builder

  return decorate


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str) -> Algorithm:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f'unknown algorithm {name!r}; known: {", ".join(names())}') from None


@register('fedavg', 'weighted Federated Averaging (the uncompressed baseline)')
def _build_fedavg(model_fn: fedavg.ModelFn, hparams: Hyperparameters):
  return fedavg.build_weighted_fed_avg(
      model_fn,
      client_optimizer=optimizers.build_optimizer(
          hparams.client_optimizer, hparams.client_learning_rate),
      server_optimizer=optimizers.build_optimizer(
          hparams.server_optimizer, hparams.server_learning_rate))
