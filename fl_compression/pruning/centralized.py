"""Centralized magnitude pruning with tensorflow-model-optimization: a non-federated anchor.

tfmot's `prune_low_magnitude` wraps exactly the dense layers that federated pruning prunes
(`pruned_dense.wrapping_dense`), with a `ConstantSparsity` schedule: unstructured, per-weight
magnitude pruning. The model trains on pooled batches with tfmot's `UpdatePruningStep` driving
the masks; the result is a dense-shaped model whose pruned weights are zero.
"""

import dataclasses
from typing import Any, Iterable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_model_optimization as tfmot
# The wrapper class that `prune_low_magnitude` returns (not exported by the public API).
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from fl_compression.models import asr
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.pruning import plan as plan_lib


@dataclasses.dataclass
class PrunedResult:
  weights: tff.learning.models.ModelWeights  # Of the dense model config.
  achieved_sparsity: float  # Zero fraction of the prunable kernels.
  steps: int
  mean_loss_last_steps: float


def _wrappers(model: tf.keras.Model) -> list[pruning_wrapper.PruneLowMagnitude]:
  return [m for m in model.submodules if isinstance(m, pruning_wrapper.PruneLowMagnitude)]


class _UpdatePruningStep(tfmot.sparsity.keras.UpdatePruningStep):
  """tfmot's step callback, finding wrappers inside custom layers as well (its own search
  descends only into nested Keras models, and the Conformer blocks are layers)."""

  def on_train_begin(self, logs=None):
    self.prunable_layers = _wrappers(self.model)
    if self.prunable_layers and self.prunable_layers[0].pruning_step == -1:
      tf.keras.backend.batch_set_value([(layer.pruning_step, 0)
                                        for layer in self.prunable_layers])


def _tfmot_variables(model: tf.keras.Model) -> set[int]:
  """ids of the variables tfmot's wrappers add (masks, thresholds, step counters)."""
  ids = set()
  for layer in _wrappers(model):
    own = {w.ref() for w in layer.layer.weights}
    ids.update(id(v) for v in layer.non_trainable_weights if v.ref() not in own)
  return ids


def prune_low_magnitude(model_config: dict[str, Any],
                        weights: tff.learning.models.ModelWeights,
                        batches: Iterable[dict[str, tf.Tensor]], *, sparsity: float, steps: int,
                        learning_rate: float, frequency: int = 10) -> PrunedResult:
  """Trains `weights` for `steps` Adam steps under tfmot magnitude pruning at `sparsity`."""
  plan_lib.validate_sparsity(sparsity, 'sparsity')
  schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=frequency)
  with pruned_dense.wrapping_dense(lambda layer: tfmot.sparsity.keras.prune_low_magnitude(
      layer, pruning_schedule=schedule)):
    model = registry.build_keras_model(model_config)
  plain = registry.build_keras_model(model_config)
  if [v.shape for v in model.trainable_variables] != [v.shape for v in plain.trainable_variables]:
    raise ValueError('the tfmot-wrapped model has other trainable variables than the model')
  wrapped = _wrappers(model)
  prunable = plan_lib.prunable_layers(plain)
  if len(wrapped) != len(prunable):
    raise ValueError(f'tfmot wraps {len(wrapped)} layers; federated pruning prunes '
                     f'{len(prunable)}')
  extra = _tfmot_variables(model)
  own_non_trainable = [v for v in model.non_trainable_variables if id(v) not in extra]
  for variable, value in zip(model.trainable_variables, weights.trainable):
    variable.assign(value)
  for variable, value in zip(own_non_trainable, weights.non_trainable):
    variable.assign(value)

  optimizer = tf.keras.optimizers.Adam(learning_rate)
  callback = _UpdatePruningStep()
  callback.set_model(model)
  callback.on_train_begin()

  @tf.function(reduce_retracing=True)
  def train_step(batch):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(asr.per_example_loss(model, batch, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  losses = []
  for step, batch in enumerate(batches):
    if step >= steps:
      break
    callback.on_train_batch_begin(batch=step)  # The wrappers count their steps themselves.
    losses.append(float(train_step(batch)))
  callback.on_epoch_end(0)
  if len(losses) < steps:
    raise ValueError(f'the batches ran out after {len(losses)} of {steps} steps')
  # Masks applied to the kernels (what tfmot's strip_pruning keeps), by variable.
  for layer in _wrappers(model):
    for weight, mask, _ in layer.pruning_vars:
      weight.assign(weight * mask)
  kernels = {layer.name: None for layer in prunable}
  by_position = dict(zip([v.name for v in plain.trainable_variables], model.trainable_variables))
  zeros = total = 0
  for name in kernels:
    value = by_position[name + '/kernel:0'].numpy()
    zeros += int(np.sum(value == 0))
    total += value.size
  result = tff.learning.models.ModelWeights(
      trainable=[v.numpy() for v in model.trainable_variables],
      non_trainable=[v.numpy() for v in own_non_trainable])
  return PrunedResult(result, zeros / total, len(losses), float(np.mean(losses[-10:])))
