"""Federated pruning as `tff.learning` processes composed from TFF blocks, one per stage.

A round: the distributor computes importance scores and masks on the server and broadcasts the
*shrunk* model (kept sub-kernels and their index vectors); clients train the reduced model
(TFF's model-delta client work); the example-weighted mean aggregates the reduced updates; the
finalizer expands the aggregate to full shapes (zero where pruned), applies the server
optimizer, updates the gradient-magnitude momentum on kept entries and stores the masks used.

Phases by round: pruning (sparsity constant or rising in steps to the target; a unit pruned
stays pruned), refining (target sparsity; masks regenerated each round, pruned units keep their
server values and scores and can grow back), fine-tuning (masks frozen). The server state
counts the rounds done and the computations pick the phase's mask mode from it, so a pruning
stage is one plan (one shape set): its process is built once, cached by the program, and serves
the pruning and refining rounds with those shapes (with a constant schedule, all of them).

Fine-tuning is its own stage: at its first round the server model itself is shrunk to the
reduced model with the last masks (`convert_state`; the server optimizer's per-weight slots,
e.g. momentum, are shrunk with it), and from then on the round is FedAvg (or, stacked, the
OMC/FedAQT process) on the reduced model: no scores, masks or expansion, and the server holds
the reduced model only. On the kept weights a fine-tuning round equals the frozen-mask round of
the full-size process (tested).

With a `compression` config (`--fp_compress=omc` or `fedaqt`), pruning and compression stack:
the distributor shrinks the model and then encodes the reduced model's weight matrices with the
OMC or FedAQT codec, and the client work and aggregator are those of
`fl_compression.compression.process` on the reduced model, so clients hold and exchange a
physically smaller model that is also compressed.

`FederatedDropout` (`--algorithm=fd`) is the same process with random units each round and
the full model as its result (Caldas et al. 2018): the anchor that shows what importance buys.
"""

import collections
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.compression import process as compression_process
from fl_compression.importance import layers as importance_layers
from fl_compression.importance import targets as importance_targets
from fl_compression.learning import algorithms
from fl_compression.learning import composition
from fl_compression.learning import fedavg
from fl_compression.learning import non_finite
from fl_compression.learning import stages
from fl_compression.models import registry
from fl_compression.pruning import plan as plan_lib
from fl_compression.pruning import reduce as reduce_lib

PHASE_MODES = {'prune': 'monotone', 'refine': 'free', 'finetune': 'fixed'}
FINETUNE = 'finetune'  # First element of the fine-tuning stages' keys.
SCHEDULES = ('constant', 'step')
ALLOCATIONS = ('uniform', 'adaptive', 'importance')


@dataclasses.dataclass(frozen=True)
class PruningConfig:
  """What `--fp_*` flags set. Rounds are 1-based; phases: [1, refine_start) pruning,
  [refine_start, finetune_start) refining, [finetune_start, total] fine-tuning."""

  sparsity: float = 0.3
  pattern: str = 'column'
  importance: reduce_lib.ImportanceConfig = reduce_lib.ImportanceConfig()
  schedule: str = 'constant'
  ramp_steps: int = 4
  refine_start: int = 0  # 0: a third of the rounds in.
  finetune_start: int = 0  # 0: two thirds of the rounds in.
  adaptive: bool = False  # The same as allocation='adaptive'.
  max_layer_sparsity: float = 0.9
  prunable: str = 'paper'  # plan_lib.PRUNABLE_SETS: 'paper' or 'extended'.
  # Per-layer sparsity: 'uniform', 'adaptive' (from the layers' weight magnitudes) or
  # 'importance' (from the layer-importance ranking at `ranking`: denser where resetting the
  # block hurts more); '' follows `adaptive`.
  allocation: str = ''
  ranking: str = ''

  def resolved(self, total_rounds: int) -> 'PruningConfig':
    """Checks every setting (errors name the flag) and fills the default phase boundaries."""
    plan_lib.validate_sparsity(self.sparsity, 'fp_sparsity')
    plan_lib.validate_pattern(self.pattern, 'fp_pattern')
    plan_lib.validate_prunable(self.prunable, 'fp_prunable')
    allocation = self.allocation or ('adaptive' if self.adaptive else 'uniform')
    if allocation not in ALLOCATIONS:
      raise plan_lib.PlanError(f'--fp_allocation={allocation!r} is unknown; known: '
                               f'{", ".join(ALLOCATIONS)}')
    if self.adaptive and allocation != 'adaptive':
      raise plan_lib.PlanError(f'--fp_adaptive contradicts --fp_allocation={allocation}')
    if (allocation == 'importance') != bool(self.ranking):
      raise plan_lib.PlanError('--fp_allocation=importance needs --fp_ranking, and '
                               '--fp_ranking applies to it only')
    if self.schedule not in SCHEDULES:
      raise plan_lib.PlanError(f'--fp_schedule={self.schedule!r} is unknown; known: '
                               f'{", ".join(SCHEDULES)}')
    if self.ramp_steps < 1:
      raise plan_lib.PlanError(f'--fp_ramp_steps={self.ramp_steps} must be positive')
    if not self.sparsity <= self.max_layer_sparsity < 1.0:
      raise plan_lib.PlanError(f'--fp_max_layer_sparsity={self.max_layer_sparsity} must be in '
                               f'[--fp_sparsity, 1)')
    refine = self.refine_start or 1 + total_rounds // 3
    finetune = self.finetune_start or max(refine, 1 + (2 * total_rounds) // 3)
    if not 1 <= refine <= total_rounds + 1:
      raise plan_lib.PlanError(f'--fp_refine_start={refine} is outside [1, {total_rounds + 1}]')
    if not refine <= finetune <= total_rounds + 1:
      raise plan_lib.PlanError(f'--fp_finetune_start={finetune} must be in '
                               f'[--fp_refine_start={refine}, {total_rounds + 1}]')
    if finetune < 2:
      raise plan_lib.PlanError('--fp_finetune_start=1: fine-tuning keeps the masks of earlier '
                               'rounds, so at least one pruning or refining round must come first')
    return dataclasses.replace(self, refine_start=refine, finetune_start=finetune,
                               allocation=allocation, adaptive=allocation == 'adaptive')

  def phase(self, round_num: int) -> str:
    if round_num < self.refine_start:
      return 'prune'
    return 'refine' if round_num < self.finetune_start else 'finetune'

  def mode_at(self, round_num: tf.Tensor) -> tf.Tensor:
    """In TF: the `reduce_lib.MODES` index of the phase of (1-based) `round_num`."""
    index = {phase: reduce_lib.MODES.index(mode) for phase, mode in PHASE_MODES.items()}
    return tf.where(round_num < self.refine_start, index['prune'],
                    tf.where(round_num < self.finetune_start, index['refine'],
                             index['finetune']))

  def sparsity_at(self, round_num: int) -> float:
    """The target sparsity of (1-based) `round_num`. With a gradient-based importance the
    first round is dense (sparsity 0): the server has seen no update yet, and a mask chosen
    then could only rank by magnitude; after a dense round every unit has a gradient momentum,
    so masks rank by it and a unit pruned later keeps a score it can grow back with."""
    if round_num <= 1 and self.importance.uses_gradient:
      return 0.0
    if self.schedule == 'constant' or self.phase(round_num) != 'prune':
      return self.sparsity
    return plan_lib.step_sparsity(self.sparsity, round_num, self.refine_start - 1,
                                  self.ramp_steps)


def config_from_options(options: dict[str, Any]) -> PruningConfig:
  """A `PruningConfig` from flag values named without the `fp_` prefix (missing: default)."""
  defaults = PruningConfig()
  importance = reduce_lib.ImportanceConfig(
      method=options.get('importance', defaults.importance.method),
      norm=options.get('norm', defaults.importance.norm),
      momentum=options.get('momentum', defaults.importance.momentum))
  fields = {f.name for f in dataclasses.fields(PruningConfig)} - {'importance'}
  return PruningConfig(importance=importance,
                       **{k: v for k, v in options.items() if k in fields})


def _finalizer(reducer: reduce_lib.Reducer, config: PruningConfig,
               server_optimizer: tff.learning.optimizers.Optimizer, server_type, update_type
               ) -> tff.learning.templates.FinalizerProcess:
  specs = [tf.TensorSpec(t.shape, t.dtype) for t in server_type.model.trainable]

  @tff.tensorflow.computation
  def init_tf():
    return server_optimizer.initialize(specs)

  @tff.federated_computation
  def init_fn():
    return tff.federated_eval(init_tf, tff.SERVER)

  @tff.tensorflow.computation(init_tf.type_signature.result, server_type, update_type)
  def next_tf(optimizer_state, server, update):
    indices = reducer.indices(server, config.mode_at(server['rounds_done'] + 1))
    full_update = reducer.expand(list(update), indices)
    # A non-finite aggregate (every client dropped: 0/0) is rejected, as TFF's own finalizer
    # does: the model, its optimizer state and the gradient momentum stay as they were. The
    # round still counts (rounds_done advances, so the schedule moves on) and the masks are
    # recomputed from the unchanged model and momentum; the round is reported in
    # update_non_finite.
    finite = non_finite.all_finite(full_update)
    new_optimizer_state, trainable = server_optimizer.next(
        optimizer_state, list(server['model'].trainable), full_update)
    optimizer_state = non_finite.keep_if(finite, new_optimizer_state, optimizer_state)
    trainable = non_finite.keep_if(finite, trainable, list(server['model'].trainable))
    masks = [reducer.masks(indices, i) for i in range(len(reducer.layers))]
    changed = tf.add_n([tf.reduce_sum(tf.abs(new - old)) for layer_new, layer_old in
                        zip(masks, server['masks']) for new, old in zip(layer_new, layer_old)])
    new_server = collections.OrderedDict(
        model=tff.learning.models.ModelWeights(trainable=trainable,
                                               non_trainable=server['model'].non_trainable),
        momentum=non_finite.keep_if(
            finite, reducer.update_momentum(list(server['momentum']), full_update, indices),
            list(server['momentum'])),
        masks=masks,
        rounds_done=server['rounds_done'] + 1)
    # Units whose mask changed this round: pruned plus regrown (0 when masks are frozen).
    return optimizer_state, new_server, collections.OrderedDict(
        mask_changes=changed, update_non_finite=tf.cast(tf.logical_not(finite), tf.int32))

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(server_type, tff.SERVER),
                             tff.FederatedType(update_type, tff.SERVER))
  def next_fn(state, server, update):
    optimizer_state, new_server, measurements = tff.federated_map(
        next_tf, (state, server, update))
    return tff.templates.MeasuredProcessOutput(state=optimizer_state, result=new_server,
                                               measurements=measurements)

  return tff.learning.templates.FinalizerProcess(init_fn, next_fn)


def _distributor(reducer: reduce_lib.Reducer, config: PruningConfig, server_type,
                 encode: Optional[Callable[..., Any]] = None
                 ) -> tff.learning.templates.DistributionProcess:
  """Broadcasts the shrunk model; `encode(reduced, round)` compresses it when stacking."""

  @tff.tensorflow.computation(server_type)
  def shrink(server):
    round_num = server['rounds_done'] + 1
    reduced = reducer.shrink(server['model'], reducer.indices(server, config.mode_at(round_num)))
    return reduced if encode is None else encode(reduced, round_num)

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  # The fraction of the model's parameters the clients do not get: the plan's, exactly.
  fraction = plan_lib.removed_parameters(reducer.plan) / reducer.full_parameters

  @tff.tensorflow.computation
  def measurements():
    return collections.OrderedDict(dropped_fraction=tf.constant(fraction, tf.float32))

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(server_type, tff.SERVER))
  def next_fn(state, server):
    reduced = tff.federated_broadcast(tff.federated_map(shrink, server))
    return tff.templates.MeasuredProcessOutput(
        state=state, result=reduced, measurements=tff.federated_eval(measurements, tff.SERVER))

  return tff.learning.templates.DistributionProcess(init_fn, next_fn)


class FederatedPruning(stages.StagedTraining):
  """The stages of a federated pruning run (see the module docstring)."""

  def __init__(self, model_config: dict[str, Any], make_model_fn, config: PruningConfig,
               total_rounds: int, client_optimizer, server_optimizer,
               initial_weights: Optional[tff.learning.models.ModelWeights] = None,
               compression: Optional[compression_process.CompressionConfig] = None):
    self.config = config.resolved(total_rounds)
    self.compression = compression
    self.model_config = model_config
    self._make_model_fn = make_model_fn
    self._client_optimizer, self._server_optimizer = client_optimizer, server_optimizer
    full = registry.build_keras_model(model_config)
    self.full_parameters = int(full.count_params())
    self.layers = plan_lib.prunable_layers(full, self.config.prunable)
    if not self.layers:
      raise plan_lib.PlanError(f'--algorithm=fp: the {model_config.get("name")} model has '
                               'nothing prunable')
    if self.config.allocation == 'adaptive':
      weights = initial_weights.trainable if initial_weights is not None else [
          v.numpy() for v in full.trainable_variables]
      by_name = {v.name: w for v, w in zip(full.trainable_variables, weights)}
      magnitudes = {layer.name: float(np.mean(np.abs(by_name[layer.name + '/kernel:0'])))
                    for layer in self.layers}
      self._magnitudes = magnitudes
    elif self.config.allocation == 'importance':
      ranking = importance_targets.load_ranking(self.config.ranking, model_config, 'fp_ranking')
      self._magnitudes = importance_weights(self.layers, ranking)
    self._full_model = full  # For every plan's Reducer: a Conformer takes seconds to build.
    self._reducers: dict[str, reduce_lib.Reducer] = {}
    # Per plan: the reduced model's client work, shared by its pruning and fine-tuning stages.
    self._client_works: dict[str, tff.learning.templates.ClientWorkProcess] = {}
    self._plans: dict[tuple[str, str], dict[str, Any]] = {}

  def plan_at(self, round_num: int) -> dict[str, Any]:
    sparsity = self.config.sparsity_at(round_num)
    if self.config.allocation != 'uniform' and sparsity > 0:
      sparsity = plan_lib.adaptive_sparsity(self.layers, self._magnitudes, sparsity,
                                            self.config.max_layer_sparsity)
    return plan_lib.make_plan(self.layers, self.config.pattern, sparsity)

  def dropped_fraction(self, round_num: int = 1, sparsity: Optional[float] = None) -> float:
    """The fraction of the model's parameters the clients do not get in `round_num` (what the
    distributor releases as `dropped_fraction`), or with uniform `sparsity` of the prunable
    layers in its place; from the plan alone, nothing is built."""
    plan = (self.plan_at(round_num) if sparsity is None else
            plan_lib.make_plan(self.layers, self.config.pattern, sparsity))
    return plan_lib.removed_parameters(plan) / self.full_parameters

  def stage_key(self, round_num: int):
    """The plan's shapes: rounds with equal keys share one compiled process. Fine-tuning
    rounds: `(FINETUNE, key of the last round before fine-tuning)`, whose masks they keep."""
    round_num = max(round_num, 1)
    if self.config.phase(round_num) == 'finetune':
      return (FINETUNE, self.stage_key(self.config.finetune_start - 1))
    plan = self.plan_at(round_num)
    key = plan_lib.describe(plan)
    self._plans[key] = plan
    return key

  def convert_state(self, state, from_stage: stages.Stage, to_stage: stages.Stage):
    """Into fine-tuning: the server model and its optimizer slots shrunk with the last masks."""
    if not _is_finetune(to_stage.key) or _is_finetune(from_stage.key):
      return state
    reducer = self._reducer(self._plans[from_stage.key])
    full_shapes = reducer.full_shapes

    @tff.tensorflow.computation(_state_type(from_stage.train_process))
    def reduce_server(state):
      server = state.global_model_weights
      indices = reducer.indices(server, 'fixed')
      non_trainable = server['model'].non_trainable

      def shrink_slots(value):
        # An optimizer slot list (momentum, Adam moments) has one tensor per trainable weight.
        if (isinstance(value, (list, tuple)) and len(value) == len(full_shapes) and
            all(tuple(v.shape) == s for v, s in zip(value, full_shapes))):
          return reducer.shrink(tff.learning.models.ModelWeights(
              trainable=list(value), non_trainable=non_trainable), indices).trainable
        return value

      optimizer_state = collections.OrderedDict(
          (name, shrink_slots(value)) for name, value in state.finalizer.items())
      return (reducer.shrink(server['model'], indices), optimizer_state,
              server['rounds_done'])

    model, optimizer_state, rounds_done = reduce_server(state)
    process = to_stage.train_process
    new_state = process.set_model_weights(process.initialize(), model)
    replaced = dict(finalizer=optimizer_state)
    if self.compression is not None:
      # The compressed process's distributor counts rounds (it seeds partial selection).
      replaced['distributor'] = rounds_done
    return new_state._replace(**replaced)  # A NamedTuple (LearningAlgorithmState).

  def _reducer(self, plan: dict[str, Any]) -> reduce_lib.Reducer:
    key = plan_lib.describe(plan)
    if key not in self._reducers:
      self._reducers[key] = reduce_lib.Reducer(self.model_config, plan, self.config.importance,
                                               full_model=self._full_model)
    return self._reducers[key]

  def _client_work(self, plan_key: str, reduced_model_fn):
    """Local training of `plan_key`'s reduced model (built once: its trace is the largest part
    of building a stage)."""
    if plan_key not in self._client_works:
      self._client_works[plan_key] = fedavg.client_work_block(reduced_model_fn,
                                                              self._client_optimizer)
    return self._client_works[plan_key]

  def build_stage(self, key) -> stages.Stage:
    if _is_finetune(key):
      return self._finetune_stage(key)
    reducer = self._reducer(self._plans[key])
    full_model_fn = self._make_model_fn(self.model_config)
    reduced_model_fn = self._make_model_fn(reducer.reduced_config)

    @tff.tensorflow.computation
    def initial_server():
      return reducer.initial_server_weights(
          tff.learning.models.ModelWeights.from_model(full_model_fn()))

    server_type = initial_server.type_signature.result
    reduced_type = reducer.reduced_weights_type
    if self.compression is None:
      distributor = _distributor(reducer, self.config, server_type)
      client_work = self._client_work(key, reduced_model_fn)
      aggregator = tff.aggregators.MeanFactory().create(
          reduced_type.trainable, tff.TensorType(np.float32))
    else:
      covered = compression_process.covered_variables(self.compression, reduced_type)
      distributor = _distributor(reducer, self.config, server_type, functools.partial(
          compression_process.encode_for_clients, self.compression, covered))
      client_work, aggregator = compression_process.client_blocks(
          reduced_model_fn, self.compression, self._client_optimizer, reduced_type,
          distributor.next.type_signature.result.result.member, covered)
    process = composition.compose(
        initial_model_weights_fn=initial_server, distributor=distributor,
        client_work=client_work, aggregator=aggregator,
        finalizer=_finalizer(reducer, self.config, self._server_optimizer, server_type,
                             reduced_type.trainable))

    # Evaluation and the saved model use the masks the clients trained with last.
    @tff.tensorflow.computation(_state_type(process))
    def model_weights(state):
      server = state.global_model_weights
      return reducer.shrink(server['model'], reducer.indices(server, 'fixed'))

    return stages.Stage(key, process, reducer.reduced_config, reduced_model_fn, model_weights)

  def _finetune_stage(self, key) -> stages.Stage:
    """FedAvg (or the stacked compression process) on the reduced model of `key[1]`'s plan."""
    reducer = self._reducer(self._plans[key[1]])
    reduced_model_fn = self._make_model_fn(reducer.reduced_config)
    if self.compression is None:
      # The pruning stage's client work, and no model trace for initial weights: the stage
      # starts from the converted state (`convert_state`), never from its own initialization.
      process = fedavg.build_weighted_fed_avg(
          reduced_model_fn, self._client_optimizer, self._server_optimizer,
          initial_model_weights_fn=_zeros_of(reducer.reduced_weights_type),
          client_work=self._client_work(key[1], reduced_model_fn))
    else:
      process = compression_process.build_compressed_fed_avg(
          reduced_model_fn, self.compression, self._client_optimizer, self._server_optimizer)
    return stages.Stage(key, process, reducer.reduced_config, reduced_model_fn,
                        process.get_model_weights)

  def initial_state(self, stage: stages.Stage, initial_model_weights=None):
    process = stage.train_process
    state = process.initialize()
    if initial_model_weights is None:
      return state
    server_type = process.get_model_weights.type_signature.result
    reducer = self._reducer(self._plans[stage.key])

    @tff.tensorflow.computation(server_type.model)
    def augment(weights):
      return reducer.initial_server_weights(weights)

    return process.set_model_weights(state, augment(initial_model_weights))

  def initial_evaluation_stage(self, first_stage: stages.Stage) -> stages.Stage:
    """The dense starting model: evaluated before the first round."""
    return self._dense_stage(first_stage, ('dense',))

  def _dense_stage(self, stage: stages.Stage, key) -> stages.Stage:
    """`stage`'s process with the full server model as its model."""

    @tff.tensorflow.computation(_state_type(stage.train_process))
    def dense_weights(state):
      return state.global_model_weights['model']

    return stages.Stage(key, stage.train_process, self.model_config,
                        self._make_model_fn(self.model_config), dense_weights)


def _zeros_of(weights_type) -> tff.Computation:
  """A computation returning zeros of `weights_type` (a `ModelWeights` type): the initial
  weights of a process that always continues from a converted state."""

  @tff.tensorflow.computation
  def zeros():
    return tff.learning.models.ModelWeights(
        trainable=[tf.zeros(t.shape, t.dtype) for t in weights_type.trainable],
        non_trainable=[tf.zeros(t.shape, t.dtype) for t in weights_type.non_trainable])

  return zeros


def importance_weights(layers, ranking: dict[str, Any]) -> dict[str, float]:
  """Per prunable layer, the density weight of `--fp_allocation=importance`: 1 plus the relative
  WER damage of re-initializing the layer's encoder block (at least 0), so a layer keeps units
  in proportion to how much its block matters (`plan_lib.adaptive_sparsity` then scales the
  weights to the target sparsity); layers outside the blocks get the blocks' mean weight."""
  damage = [1.0 + max(0.0, float(b['reinit_relative'])) for b in ranking['blocks']]
  mean = float(np.mean(damage))
  weights = {}
  for layer in layers:
    part = importance_layers.block_part(layer.name)
    weights[layer.name] = damage[part[0]] if part is not None else mean
  return weights


class FederatedDropout(FederatedPruning):
  """Random sub-models of the plan's sizes every round; the result is the full model.

  `blocks` (encoder block indices) targets the dropout: only those blocks' prunable kernels
  lose units (targeted federated dropout); None: every prunable kernel (flat).
  """

  def __init__(self, model_config: dict[str, Any], make_model_fn, config: PruningConfig,
               total_rounds: int, client_optimizer, server_optimizer,
               initial_weights: Optional[tff.learning.models.ModelWeights] = None,
               blocks: Optional[Sequence[int]] = None):
    config = dataclasses.replace(
        config, importance=reduce_lib.ImportanceConfig('random', config.importance.norm),
        schedule='constant', refine_start=1, finetune_start=total_rounds + 1, adaptive=False,
        allocation='uniform', ranking='')
    super().__init__(model_config, make_model_fn, config, total_rounds, client_optimizer,
                     server_optimizer, initial_weights)
    if blocks is not None:
      chosen = set(blocks)
      self.layers = [layer for layer in self.layers
                     if (importance_layers.block_part(layer.name) or (None,))[0] in chosen]
      if not self.layers:
        raise plan_lib.PlanError(f'--fd_target: blocks {sorted(chosen)} have no prunable '
                                 'kernels')

  def build_stage(self, key) -> stages.Stage:
    return self._dense_stage(super().build_stage(key), key)


def _is_finetune(key) -> bool:
  return isinstance(key, tuple) and key[0] == FINETUNE


def _state_type(process):
  return process.initialize.type_signature.result.member


def stacked_compression(options: dict[str, Any]
                        ) -> Optional[compression_process.CompressionConfig]:
  """The OMC or FedAQT config that `--fp_compress` stacks on pruning (None: none)."""
  compress = options.get('compress', 'none')
  if compress == 'none':
    return None
  if compress not in compression_process.CONFIGS:
    raise compression_process.ConfigError(
        f'--fp_compress={compress!r} is unknown; known: none, '
        f'{", ".join(compression_process.CONFIGS)}')
  return compression_process.CONFIGS[compress](options)


def _build_variant(cls, context: algorithms.BuildContext) -> stages.StagedTraining:
  options = dict(context.options)
  extra = {}
  if cls is FederatedPruning:
    compression = stacked_compression(options)
    if compression is not None:
      extra['compression'] = compression
  else:  # Federated dropout: --fd_rate of --fd_target's blocks.
    rate = float(options.pop('rate', 0.5))
    importance_targets.check_rate(rate, 'fd_rate')
    options['sparsity'] = rate
    ranking_path = options.pop('ranking', '')
    num_blocks = context.model_config.get('encoder', {}).get('num_blocks', 0)
    ranking = (importance_targets.load_ranking(ranking_path, context.model_config, 'fd_ranking')
               if ranking_path else None)
    extra['blocks'] = importance_targets.target_blocks(
        options.pop('target', 'flat'), num_blocks, ranking, 'fd_target', 'fd_ranking')
  return cls(context.model_config, context.make_model_fn, config_from_options(options),
             context.total_rounds, client_optimizer=context.hparams.build_client_optimizer(),
             server_optimizer=context.hparams.build_server_optimizer(),
             initial_weights=context.initial_weights, **extra)


@algorithms.register_staged('fp', 'federated pruning: clients train a physically smaller model '
                            '(--fp_* flags)')
def _build_federated_pruning(context: algorithms.BuildContext) -> stages.StagedTraining:
  return _build_variant(FederatedPruning, context)


@algorithms.register_staged('fd', 'federated dropout: clients train random sub-models (--fd_rate '
                            'of the units of --fd_target\'s blocks, --fp_pattern); the result is '
                            'the full model')
def _build_federated_dropout(context: algorithms.BuildContext) -> stages.StagedTraining:
  return _build_variant(FederatedDropout, context)
