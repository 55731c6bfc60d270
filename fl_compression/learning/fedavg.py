"""Weighted Federated Averaging, composed from TFF's own learning blocks.

The baseline every compressed variant is compared against: broadcast, local training with a
`tff.learning.optimizers` client optimizer, example-weighted mean, server optimizer. Clients
whose update is not finite are dropped (`non_finite.py`).
"""

from typing import Callable, Optional

import numpy as np
import tensorflow_federated as tff

from fl_compression.learning import composition
from fl_compression.learning import non_finite

ModelFn = Callable[[], tff.learning.models.VariableModel]


def build_weighted_fed_avg(
    model_fn: ModelFn,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    **prebuilt,
) -> tff.learning.templates.LearningProcess:
  """Returns FedAvg as a composed learning process with communication accounting.

  Type signature of `next`: `(<state@SERVER, {sequence}@CLIENTS> -> <state@SERVER,
  metrics=<distributor, client_work, aggregator, finalizer, communication>@SERVER>)`.
  `prebuilt`: blocks already built for this model (see `fedavg_blocks`).
  """
  return composition.compose(**fedavg_blocks(model_fn, client_optimizer, server_optimizer,
                                             **prebuilt))


def build_fed_avg_with_tff_compression(
    model_fn: ModelFn,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
) -> tff.learning.templates.LearningProcess:
  """FedAvg whose aggregator is TFF's own `tff.learning.compression_aggregator()`.

  What a TFF user would pick today to shrink uploads: adaptive zeroing and L2 clipping, then
  8-bit uniform quantization (bit-packed) of every update tensor above 20,000 elements. Bytes
  up are the encoded tensors as TFF's aggregation intrinsics take them from each client.
  Same type signature as `build_weighted_fed_avg`.
  """
  blocks = fedavg_blocks(model_fn, client_optimizer, server_optimizer)
  weights_type = blocks['initial_model_weights_fn'].type_signature.result
  blocks['aggregator'] = tff.learning.compression_aggregator(weighted=True).create(
      weights_type.trainable, tff.TensorType(np.float32))
  return composition.compose(**blocks, aggregator_encodes=True)


def fedavg_blocks(model_fn: ModelFn,
                  client_optimizer: tff.learning.optimizers.Optimizer,
                  server_optimizer: tff.learning.optimizers.Optimizer,
                  initial_model_weights_fn: Optional[tff.Computation] = None,
                  client_work: Optional[tff.learning.templates.ClientWorkProcess] = None
                  ) -> dict:
  """FedAvg's initial-weights computation and four blocks, for variants to reuse or replace.

  A caller that has built them already for the same model and client optimizer may pass
  `initial_model_weights_fn` and `client_work` (`client_work_block`): each costs a trace of
  the model, and the client work's is the largest part of building the process.
  """
  if initial_model_weights_fn is None:

    @tff.tensorflow.computation
    def initial_model_weights_fn():
      return tff.learning.models.ModelWeights.from_model(model_fn())

  weights_type = initial_model_weights_fn.type_signature.result
  return dict(
      initial_model_weights_fn=initial_model_weights_fn,
      distributor=tff.learning.templates.build_broadcast_process(weights_type),
      client_work=client_work or client_work_block(model_fn, client_optimizer),
      aggregator=tff.aggregators.MeanFactory().create(
          weights_type.trainable, tff.TensorType(np.float32)),
      finalizer=tff.learning.templates.build_apply_optimizer_finalizer(
          server_optimizer, weights_type),
  )


def client_work_block(model_fn: ModelFn, client_optimizer: tff.learning.optimizers.Optimizer
                      ) -> tff.learning.templates.ClientWorkProcess:
  """FedAvg's client work: local training, the model delta weighted by examples, clients with
  a non-finite delta counted and given weight 0."""
  return non_finite.with_non_finite_count(tff.learning.templates.build_model_delta_client_work(
      model_fn, client_optimizer, client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES))
