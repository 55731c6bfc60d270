"""The registry of learning algorithms that `--algorithm` selects.

A variant registers itself here once, with a builder that takes the model function and the
common hyperparameters; the training program, tests and benchmarks look it up by name.
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
  return fedavg.build_weighted_fed_avg(
      model_fn,
      client_optimizer=optimizers.build_optimizer(
          hparams.client_optimizer, hparams.client_learning_rate),
      server_optimizer=optimizers.build_optimizer(
          hparams.server_optimizer, hparams.server_learning_rate))


@register('tff_compression', 'FedAvg with TFF\'s own tff.learning.compression_aggregator() '
          '(adaptive zeroing and clipping, 8-bit uniform quantization of large update tensors)')
def _build_fedavg_tff_compression(model_fn: fedavg.ModelFn, hparams: Hyperparameters):
  return fedavg.build_fed_avg_with_tff_compression(
      model_fn,
      client_optimizer=optimizers.build_optimizer(
          hparams.client_optimizer, hparams.client_learning_rate),
      server_optimizer=optimizers.build_optimizer(
          hparams.server_optimizer, hparams.server_learning_rate))


@register_staged('fp', 'federated pruning: clients train a physically smaller model '
                 '(--fp_* flags)')
def _build_federated_pruning(context: BuildContext) -> stages.StagedTraining:
  from fl_compression.pruning import process  # pylint: disable=g-import-not-at-top
  return _build_pruning_variant(process.FederatedPruning, context)


@register_staged('fd', 'federated dropout: clients train random sub-models of the sizes that '
                 '--fp_sparsity and --fp_pattern give; the result is the full model')
def _build_federated_dropout(context: BuildContext) -> stages.StagedTraining:
  from fl_compression.pruning import process  # pylint: disable=g-import-not-at-top
  return _build_pruning_variant(process.FederatedDropout, context)


def _build_pruning_variant(cls, context: BuildContext) -> stages.StagedTraining:
  from fl_compression.pruning import process  # pylint: disable=g-import-not-at-top
  hparams = context.hparams
  compression = _stacked_compression(context.options)
  if compression is not None and cls is not process.FederatedPruning:
    raise process.plan_lib.PlanError('--fp_compress applies to --algorithm=fp only')
  extra = {} if compression is None else {'compression': compression}
  return cls(
      context.model_config, context.make_model_fn, process.config_from_options(context.options),
      context.total_rounds,
      client_optimizer=optimizers.build_optimizer(
          hparams.client_optimizer, hparams.client_learning_rate),
      server_optimizer=optimizers.build_optimizer(
          hparams.server_optimizer, hparams.server_learning_rate),
      initial_weights=context.initial_weights, **extra)


def _stacked_compression(options: dict[str, Any]):
  """The OMC or FedAQT config that `--fp_compress` stacks on pruning (None: none)."""
  from fl_compression.compression import process  # pylint: disable=g-import-not-at-top
  compress = options.get('compress', 'none')
  if compress == 'none':
    return None
  if compress not in process.CONFIGS:
    raise process.ConfigError(f'--fp_compress={compress!r} is unknown; known: none, '
                              f'{", ".join(process.CONFIGS)}')
  return process.CONFIGS[compress](options)


@register_staged('omc', 'online model compression: clients hold and exchange weight matrices in a '
                 'low-bit float format (--omc_* flags)')
def _build_omc(context: BuildContext) -> stages.StagedTraining:
  from fl_compression.compression import process  # pylint: disable=g-import-not-at-top
  return _build_compressed_variant(process.CONFIGS['omc'](context.options), context)


@register_staged('fedaqt', 'FedAQT: clients receive and train a low-bit integer model, the server '
                 'keeps the float model (--aqt_* flags)')
def _build_fedaqt(context: BuildContext) -> stages.StagedTraining:
  from fl_compression.compression import process  # pylint: disable=g-import-not-at-top
  return _build_compressed_variant(process.CONFIGS['fedaqt'](context.options), context)


def _build_compressed_variant(config, context: BuildContext) -> stages.StagedTraining:
  from fl_compression.compression import process  # pylint: disable=g-import-not-at-top
  hparams = context.hparams
  model_fn = context.make_model_fn(context.model_config)
  learning_process = process.build_compressed_fed_avg(
      model_fn, config,
      client_optimizer=optimizers.build_optimizer(
          hparams.client_optimizer, hparams.client_learning_rate),
      server_optimizer=optimizers.build_optimizer(
          hparams.server_optimizer, hparams.server_learning_rate))
  return stages.StagedTraining(learning_process, context.model_config, model_fn)
