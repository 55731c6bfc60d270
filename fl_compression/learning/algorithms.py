"""The registry of learning algorithms that `--algorithm` selects.

A variant registers itself once, in its own module, with a builder that takes the model
function and the common hyperparameters (`register`) or a `BuildContext` (`register_staged`);
`fl_compression.variants` imports every variant module, so importing it fills the registry.
This module knows FedAvg and FedAvg with TFF's compression aggregator only: the learning
package depends on no variant.
"""

import dataclasses
from typing import Any, Callable, Optional

import tensorflow_federated as tff

from fl_compression.learning import fedavg
from fl_compression.learning import optimizers
from fl_compression.learning import stages


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  client_optimizer: str = 'sgd'
  client_learning_rate: float = 0.1
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0

  def build_client_optimizer(self) -> tff.learning.optimizers.Optimizer:
    return optimizers.build_optimizer(self.client_optimizer, self.client_learning_rate)

  def build_server_optimizer(self) -> tff.learning.optimizers.Optimizer:
    return optimizers.build_optimizer(self.server_optimizer, self.server_learning_rate)


Builder = Callable[[fedavg.ModelFn, Hyperparameters], tff.learning.templates.LearningProcess]


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What a staged algorithm may need beyond the model function."""

  model_config: dict[str, Any]
  make_model_fn: Callable[[dict[str, Any]], fedavg.ModelFn]
  hparams: Hyperparameters
  total_rounds: int
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # Algorithm flags.
  initial_weights: Optional[tff.learning.models.ModelWeights] = None


StagedBuilder = Callable[[BuildContext], stages.StagedTraining]


@dataclasses.dataclass(frozen=True)
class Algorithm:
  name: str
  description: str
  build: Optional[Builder] = None
  build_staged: Optional[StagedBuilder] = None

  def staged(self, context: BuildContext) -> stages.StagedTraining:
    """The algorithm's stages (one stage for single-process algorithms)."""
    if self.build_staged is not None:
      return self.build_staged(context)
    model_fn = context.make_model_fn(context.model_config)
    return stages.StagedTraining(self.build(model_fn, context.hparams), context.model_config,
                                 model_fn)


_REGISTRY: dict[str, Algorithm] = {}


def register(name: str, description: str) -> Callable[[Builder], Builder]:
  """Decorator that registers `builder` under `name`."""

  def decorate(builder: Builder) -> Builder:
    if name in _REGISTRY:
      raise ValueError(f'algorithm {name!r} is registered twice')
    _REGISTRY[name] = Algorithm(name, description, builder)
    return builder

  return decorate


def register_staged(name: str, description: str
                    ) -> Callable[[StagedBuilder], StagedBuilder]:
  """Decorator that registers a staged `builder` (e.g. federated pruning) under `name`."""

  def decorate(builder: StagedBuilder) -> StagedBuilder:
    if name in _REGISTRY:
      raise ValueError(f'algorithm {name!r} is registered twice')
    _REGISTRY[name] = Algorithm(name, description, build_staged=builder)
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
  return fedavg.build_weighted_fed_avg(model_fn, hparams.build_client_optimizer(),
                                       hparams.build_server_optimizer())


@register('tff_compression', 'FedAvg with TFF\'s own tff.learning.compression_aggregator() '
          '(adaptive zeroing and clipping, 8-bit uniform quantization of large update tensors)')
def _build_fedavg_tff_compression(model_fn: fedavg.ModelFn, hparams: Hyperparameters):
  return fedavg.build_fed_avg_with_tff_compression(model_fn, hparams.build_client_optimizer(),
                                                   hparams.build_server_optimizer())
