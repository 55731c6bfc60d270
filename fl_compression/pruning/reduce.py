"""Server-side federated pruning in TF ops: importance, masks, shrink and expand.

`Reducer` pairs a full Keras model with the reduced model of one plan (same config plus
`'pruning': plan`). Its TF functions run inside TFF computations on the server:

- `indices(server)`: kept units of every piece, from importance scores (or the stored masks);
- `shrink(weights, indices)`: full `ModelWeights` -> the reduced model's weights (kept
  sub-kernels, their index vectors, every other variable as is);
- `expand(update, indices)`: a reduced trainable update -> full shapes, zero where pruned.

The server value they work on (`ServerWeights`) is the full model's weights plus, per prunable
layer, the gradient-magnitude momentum (when the importance uses it), the unit masks of
the last round, so masks can be kept monotone (pruning phase), regenerated (refining: pruned
units keep their values and scores and can grow back) or frozen (fine-tuning), and the number
of rounds done (phases and random scores follow it at run time, so one computation serves
every phase of a shape set).
"""

import collections
import dataclasses
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.pruning import plan as plan_lib

# `random` ranks units by fresh random scores each round: federated dropout's sub-models.
IMPORTANCE = ('magnitude', 'gradient', 'weight_gradient', 'random')
NORMS = ('l1', 'l2')
MODES = ('monotone', 'free', 'fixed')
# Added to the scores of units pruned earlier in the pruning phase, so they stay pruned.
_EXCLUDED = -1e30


@dataclasses.dataclass(frozen=True)
class ImportanceConfig:
  method: str = 'magnitude'
  norm: str = 'l2'
  momentum: float = 0.9  # Of the gradient magnitude (the aggregated update's |entries|).

  def __post_init__(self):
    if self.method not in IMPORTANCE:
      raise plan_lib.PlanError(f'--fp_importance={self.method!r} is unknown; known: '
                               f'{", ".join(IMPORTANCE)}')
    if self.norm not in NORMS:
      raise plan_lib.PlanError(f'--fp_norm={self.norm!r} is unknown; known: {", ".join(NORMS)}')
    if not 0.0 <= self.momentum < 1.0:
      raise plan_lib.PlanError(f'--fp_momentum={self.momentum} is outside [0, 1)')

  @property
  def uses_gradient(self) -> bool:
    return self.method in ('gradient', 'weight_gradient')


class VariableSpec(NamedTuple):
  name: str
  shape: tuple[int, ...]
  dtype: Any  # A numpy dtype.


def reduced_variable_specs(full_model: tf.keras.Model, plan: dict[str, Any]
                           ) -> tuple[list[VariableSpec], list[VariableSpec]] | None:
  """The trainable and non-trainable variables of the model `plan` reduces `full_model` to, in
  the order the built reduced model holds them, without building it (a functional Conformer's
  build traces its forward pass: about 10 s at `conformer_s`).

  A planned layer's `kernel` becomes its pieces `kernel_<p>` (`pruned_dense.piece_shapes`),
  its `bias` keeps its place (only the kept units' with `drop_units`), and its index vectors
  (`row_index_<p>` or `col_index_<p>`, int32) are its non-trainable variables, in the order of
  the layers. None when the full model has non-trainable variables of its own: where the index
  vectors go among them is not derivable from the variable lists (the caller builds the model).
  """
  if full_model.non_trainable_variables:
    return None
  trainable, non_trainable = [], []
  for variable in full_model.trainable_variables:
    layer, leaf = variable.name.rsplit('/', 1)
    if layer not in plan:
      trainable.append(VariableSpec(variable.name, tuple(variable.shape),
                                    variable.dtype.as_numpy_dtype))
      continue
    entry, dtype = plan[layer], variable.dtype.as_numpy_dtype
    pieces = pruned_dense.piece_shapes(entry)
    if leaf == 'kernel:0':
      trainable += [VariableSpec(f'{layer}/kernel_{p}:0', shape, dtype)
                    for p, shape in enumerate(pieces)]
      if entry['pattern'] in ('row', 'half_row'):
        non_trainable += [VariableSpec(f'{layer}/row_index_{p}:0', (shape[0],), np.int32)
                          for p, shape in enumerate(pieces)]
      elif not entry.get('drop_units'):
        non_trainable += [VariableSpec(f'{layer}/col_index_{p}:0', (shape[1],), np.int32)
                          for p, shape in enumerate(pieces)]
    elif leaf == 'bias:0':
      width = entry['kept'][0] if entry.get('drop_units') else entry['output_dim']
      trainable.append(VariableSpec(variable.name, (width,), dtype))
    else:
      raise ValueError(f'planned layer {layer} has an unexpected variable {variable.name}')
  return trainable, non_trainable


class Reducer:
  """Index bookkeeping between a full model and the reduced model of `plan`."""

  def __init__(self, model_config: dict[str, Any], plan: dict[str, Any],
               importance: ImportanceConfig, full_model=None):
    """`full_model`: the Keras model of `model_config` when the caller has built it already
    (building a Conformer takes seconds; only its variables' names and shapes are read)."""
    self.plan = plan
    self.importance = importance
    full = full_model if full_model is not None else registry.build_keras_model(model_config)
    self.full_config = model_config
    self.reduced_config = dict(model_config, pruning=plan)
    self.layers = [layer for layer in plan_lib.prunable_layers(full, 'extended')
                   if layer.name in plan]
    self.layer_names = [layer.name for layer in self.layers]
    full_names = [v.name for v in full.trainable_variables]
    self._full_index = {name: i for i, name in enumerate(full_names)}
    self._full_non_trainable = {v.name: i for i, v in enumerate(full.non_trainable_variables)}
    self.full_shapes = [tuple(v.shape) for v in full.trainable_variables]
    specs = reduced_variable_specs(full, plan)
    if specs is None:  # Not derivable: read them from the built reduced model.
      reduced = registry.build_keras_model(self.reduced_config)
      specs = tuple([VariableSpec(v.name, tuple(v.shape), v.dtype.as_numpy_dtype)
                     for v in variables]
                    for variables in (reduced.trainable_variables,
                                      reduced.non_trainable_variables))
      del reduced
    trainable, non_trainable = specs
    self.reduced_trainable = [self._source(v.name) for v in trainable]
    self.reduced_non_trainable = [self._source(v.name, trainable=False) for v in non_trainable]
    self.reduced_parameters = sum(int(np.prod(v.shape)) for v in trainable + non_trainable)
    self.full_parameters = int(full.count_params())
    # The TFF type of the reduced model's `ModelWeights` (what
    # `ModelWeights.from_model(reduced_model_fn())` returns in a computation), without
    # building the model.
    tensor_type = lambda v: tff.TensorType(v.dtype, v.shape)  # noqa: E731
    self.reduced_weights_type = tff.types.to_type(tff.learning.models.ModelWeights(
        trainable=[tensor_type(v) for v in trainable],
        non_trainable=[tensor_type(v) for v in non_trainable]))
    del full

  def initial_server_weights(self, model_weights: tff.learning.models.ModelWeights
                             ) -> collections.OrderedDict:
    """The server value at the start: the model, zero momentum, every unit kept."""
    return collections.OrderedDict(
        model=model_weights,
        momentum=[tf.zeros([layer.input_dim, layer.output_dim]) for layer in self.layers]
        if self.importance.uses_gradient else [],
        masks=[[tf.ones([units]) for units in plan_lib.unit_counts(
            self.plan[layer.name]['pattern'], layer)] for layer in self.layers],
        rounds_done=tf.constant(0, tf.int32))

  def _source(self, name: str, trainable: bool = True):
    layer, leaf = name.rsplit('/', 1)
    leaf = leaf.split(':')[0]
    if layer in self.plan:
      kind, _, piece = leaf.rpartition('_')
      if leaf == 'bias':
        return ('bias', layer, 0)
      return (kind, layer, int(piece))  # kernel / row_index / col_index.
    table = self._full_index if trainable else self._full_non_trainable
    return ('copy', table[name], 0)

  # Importance and masks.

  def _unit_scores(self, score: tf.Tensor, layer: plan_lib.LayerShape, piece: int,
                   hidden: tf.Tensor | None) -> tf.Tensor:
    entry = self.plan[layer.name]
    pattern = entry['pattern']
    start, end = plan_lib.piece_extent(pattern, layer, piece)
    if hidden is not None:
      score = tf.gather(score, hidden, axis=0)
    if pattern in ('row', 'half_row'):
      block, axis = score[:, start:end], 1
    else:
      block, axis = (score if hidden is not None else score[start:end, :]), 0
    if self.importance.norm == 'l1':
      return tf.reduce_sum(block, axis=axis)
    return tf.sqrt(tf.reduce_sum(tf.square(block), axis=axis))

  def _elementwise_score(self, kernel, momentum, seed):
    if self.importance.method == 'random':
      # Every unit's norm of i.i.d. scores: a uniformly random ranking, new each round.
      return tf.random.stateless_uniform(tf.shape(kernel), seed=seed)
    magnitude = tf.abs(kernel)
    if not self.importance.uses_gradient:
      return magnitude
    gradient = momentum if self.importance.method == 'gradient' else magnitude * momentum
    # Before any update has been seen (the first round) the momentum is zero: rank by
    # magnitude instead of by ties.
    return tf.cond(tf.reduce_max(momentum) > 0, lambda: gradient, lambda: magnitude)

  def indices(self, server, mode) -> dict[str, list[tf.Tensor]]:
    """Sorted kept unit indices per layer and piece (hidden units first for dense_in).

    `mode` is a name in `MODES`, or an int32 scalar tensor indexing `MODES` that is chosen at
    run time (so the phases of one shape set share one computation).
    """
    if isinstance(mode, str):
      if mode not in MODES:
        raise ValueError(f'unknown mask mode {mode!r}')
      mode = MODES.index(mode)
    trainable = server['model'].trainable
    result = {}
    for i, layer in enumerate(self.layers):
      entry = self.plan[layer.name]
      kernel = trainable[self._full_index[layer.name + '/kernel:0']]
      momentum = server['momentum'][i] if self.importance.uses_gradient else None
      score = self._elementwise_score(kernel, momentum, seed=[server['rounds_done'], i])
      hidden = None
      if 'coupled_to' in entry:
        hidden = result[entry['coupled_to']][0]
      kept = []
      for piece, count in enumerate(entry['kept']):
        mask = server['masks'][i][piece]
        units = self._mode_units(mode, mask,
                                 lambda p=piece: self._unit_scores(score, layer, p, hidden))
        kept.append(tf.sort(tf.math.top_k(units, k=count, sorted=False).indices))
      result[layer.name] = kept
    return result

  @staticmethod
  def _mode_units(mode, mask, scores_fn):
    """What top-k ranks: the stored mask (fixed), or scores, minus pruned units (monotone)."""
    monotone, free, fixed = (MODES.index(m) for m in ('monotone', 'free', 'fixed'))
    if isinstance(mode, int):
      if mode == fixed:
        return mask
      scores = scores_fn()
      return scores + (1.0 - mask) * _EXCLUDED if mode == monotone else scores
    scores = scores_fn()
    del free
    return tf.where(tf.equal(mode, fixed), mask,
                    tf.where(tf.equal(mode, monotone), scores + (1.0 - mask) * _EXCLUDED,
                             scores))

  def masks(self, indices, layer_index: int) -> list[tf.Tensor]:
    layer = self.layers[layer_index]
    pattern = self.plan[layer.name]['pattern']
    return [tf.scatter_nd(index[:, None], tf.ones_like(index, tf.float32), [units])
            for index, units in zip(indices[layer.name], plan_lib.unit_counts(pattern, layer))]

  # Shrink and expand.

  def _kernel_piece(self, kernel, layer, piece, indices):
    entry = self.plan[layer.name]
    pattern = entry['pattern']
    index = indices[layer.name][piece]
    start, end = plan_lib.piece_extent(pattern, layer, piece)
    if pattern in ('row', 'half_row'):
      return tf.gather(kernel[:, start:end], index, axis=0)
    if 'coupled_to' in entry:
      kernel = tf.gather(kernel, indices[entry['coupled_to']][0], axis=0)
    elif pattern == 'half_column':
      kernel = kernel[start:end, :]
    return tf.gather(kernel, index, axis=1)

  def shrink(self, weights: tff.learning.models.ModelWeights, indices
             ) -> tff.learning.models.ModelWeights:
    layer_of = dict(zip(self.layer_names, self.layers))

    def value(source, from_trainable):
      kind, key, piece = source
      if kind == 'copy':
        return (weights.trainable if from_trainable else weights.non_trainable)[key]
      layer = layer_of[key]
      if kind == 'kernel':
        return self._kernel_piece(weights.trainable[self._full_index[key + '/kernel:0']],
                                  layer, piece, indices)
      if kind == 'bias':
        bias = weights.trainable[self._full_index[key + '/bias:0']]
        if self.plan[key].get('drop_units'):
          bias = tf.gather(bias, indices[key][0])
        return bias
      return indices[key][piece]  # row_index / col_index.

    return tff.learning.models.ModelWeights(
        trainable=[value(s, True) for s in self.reduced_trainable],
        non_trainable=[value(s, False) for s in self.reduced_non_trainable])

  def expand(self, update: list[tf.Tensor], indices) -> list[tf.Tensor]:
    """Reduced trainable update -> full trainable shapes (zero where pruned)."""
    full = [tf.zeros(shape) for shape in self.full_shapes]
    pieces = collections.defaultdict(dict)
    for source, value in zip(self.reduced_trainable, update):
      kind, key, piece = source
      if kind == 'copy':
        full[key] = value
      else:
        pieces[key][(kind, piece)] = value
    for layer in self.layers:
      entry = self.plan[layer.name]
      got = pieces[layer.name]
      kernel_index = self._full_index[layer.name + '/kernel:0']
      full[kernel_index] = self._expand_kernel(layer, got, indices)
      if ('bias', 0) in got:
        bias = got[('bias', 0)]
        if entry.get('drop_units'):
          bias = tf.scatter_nd(indices[layer.name][0][:, None], bias, [layer.output_dim])
        full[self._full_index[layer.name + '/bias:0']] = bias
    return full

  def _expand_kernel(self, layer, got, indices):
    entry = self.plan[layer.name]
    pattern = entry['pattern']
    rows, cols = layer.input_dim, layer.output_dim
    parts = []
    for piece in range(len(entry['kept'])):
      delta = got[('kernel', piece)]
      index = indices[layer.name][piece][:, None]
      start, end = plan_lib.piece_extent(pattern, layer, piece)
      if pattern in ('row', 'half_row'):
        parts.append(tf.scatter_nd(index, delta, [rows, end - start]))
      else:
        height = int(delta.shape[0])
        parts.append(tf.transpose(tf.scatter_nd(index, tf.transpose(delta), [cols, height])))
    if pattern == 'row' or pattern == 'column':
      kernel = parts[0]
    else:
      kernel = tf.concat(parts, axis=1 if pattern == 'half_row' else 0)
    if 'coupled_to' in entry:
      kernel = tf.scatter_nd(indices[entry['coupled_to']][0][:, None], kernel, [rows, cols])
    return kernel

  def update_momentum(self, momentum: list[tf.Tensor], full_update: list[tf.Tensor], indices
                      ) -> list[tf.Tensor]:
    """m <- beta * m + (1 - beta) * |update| on kept entries; pruned entries keep their m."""
    if not self.importance.uses_gradient:
      return []
    beta = self.importance.momentum
    result = []
    for i, layer in enumerate(self.layers):
      delta = full_update[self._full_index[layer.name + '/kernel:0']]
      ones = {('kernel', p): tf.ones(shape) for p, shape in
              enumerate(pruned_dense.piece_shapes(self.plan[layer.name]))}
      kept = self._expand_kernel(layer, ones, indices)
      updated = beta * momentum[i] + (1.0 - beta) * tf.abs(delta)
      result.append(kept * updated + (1.0 - kept) * momentum[i])
    return result


def prune_once(model_config: dict[str, Any], weights: tff.learning.models.ModelWeights,
               pattern: str, sparsity: float,
               importance: ImportanceConfig = ImportanceConfig()
               ) -> tuple[dict[str, Any], tff.learning.models.ModelWeights]:
  """One-shot structured pruning of saved weights: the reduced model's config (with its plan)
  and weights, units chosen by `importance` as federated pruning's first mask is. For exports
  and benchmarks of reduced models without a federated run."""
  full = registry.build_keras_model(model_config)
  plan = plan_lib.make_plan(plan_lib.prunable_layers(full), pattern, sparsity)
  del full
  reducer = Reducer(model_config, plan, importance)
  indices = reducer.indices(reducer.initial_server_weights(weights), 'free')
  reduced = reducer.shrink(weights, indices)
  return reducer.reduced_config, tff.learning.models.ModelWeights(
      trainable=[tf.convert_to_tensor(v).numpy() for v in reduced.trainable],
      non_trainable=[tf.convert_to_tensor(v).numpy() for v in reduced.non_trainable])
