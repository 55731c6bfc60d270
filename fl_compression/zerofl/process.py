"""ZeroFL (Qiu, Fernandez-Marques et al., ICLR 2022) as a `tff.learning` process composed from
TFF blocks: sparse local training with SWAT and sparse uploads.

- **Distributor** and **finalizer**: FedAvg's (the dense float32 server model is broadcast;
  the server optimizer applies the mean update).
- **Client work**: the client trains the model whose SWAT layers (`swat.SwatDense`: every dense
  kernel of the Conformer blocks, see `SWAT_EXCLUDED`) compute with their top-k kernel entries
  (`sparsity` of each matrix zero in the computation) and their kernel gradients from top-k
  activations (`activation_sparsity`), with dense optimizer steps. It uploads the model delta
  `initial - trained`: of each SWAT matrix only the entries in the top `1 - sparsity +
  mask_ratio` of its trained weights by magnitude (`upload.py`; values float32 or
  OMC-encoded, positions as bitmap or varint gaps), everything else dense. `upload='whole'`
  is SWAT with the whole delta uploaded (the comparison point of the paper).
- **Aggregator**: decodes each sparse upload inside `tff.federated_aggregate`'s accumulate and
  averages each entry over the clients that sent it, weighted by examples (`mean_of_senders`),
  or over all clients with the missing entries as no change (`zero_fill`).

The evaluated and saved model is the plain model with every SWAT matrix restricted to its
top-k entries, which computes exactly what the SWAT layers compute. Measurements
(`client_work/...`): `client_bytes_up` (mean over clients of the encoded upload's bytes,
buffers measured: a varint position buffer has no fixed size), `uploaded_fraction` (entries
sent over trainable entries), `top_k_changes` (of the SWAT matrices' top-k entries, the
fraction that entered the set during the client's training), `non_finite_clients`.
"""

import collections
import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.compression import codecs
from fl_compression.compression import process as compression_process
from fl_compression.learning import algorithms
from fl_compression.learning import composition
from fl_compression.learning import fedavg
from fl_compression.learning import non_finite
from fl_compression.learning import stages
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.zerofl import swat
from fl_compression.zerofl import upload as upload_lib

AGGREGATIONS = ('mean_of_senders', 'zero_fill')
UPLOADS = ('sparse', 'whole')
COMPRESSIONS = ('none', 'omc')
# Dense layers outside the Conformer blocks stay dense, as SWAT keeps a network's first and
# last layers: the subsampling projection and the CTC output layer.
SWAT_EXCLUDED = ('subsampling/project', 'ctc_head')


class ConfigError(ValueError):
  """A bad ZeroFL setting; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class ZeroFLConfig:
  sparsity: float = 0.9
  mask_ratio: float = 0.2
  activation_sparsity: float = 0.0  # 0: the kernel gradients use every activation.
  aggregation: str = 'mean_of_senders'
  upload: str = 'sparse'
  values_codec: Optional[codecs.OmcCodec] = None  # `--zerofl_compress=omc`: OMC values.
  # Sparsity ramp: rounds 1..ramp_rounds raise the sparsity in `ramp_steps` equal steps to
  # `sparsity` (0: the full sparsity from round 1). A dense pretrained model cut to its top 10%
  # at once loses most of what it knew; a ramp lets training follow the cut.
  ramp_rounds: int = 0
  ramp_steps: int = 4

  def __post_init__(self):
    if self.ramp_rounds < 0:
      raise ConfigError(f'--zerofl_ramp_rounds={self.ramp_rounds} is negative')
    if self.ramp_steps < 1:
      raise ConfigError(f'--zerofl_ramp_steps={self.ramp_steps} must be positive')
    for name, value in (('sparsity', self.sparsity),
                        ('activation_sparsity', self.activation_sparsity)):
      if not 0.0 <= value < 1.0:
        raise ConfigError(f'--zerofl_{name}={value} is outside [0, 1)')
    if not 0.0 <= self.mask_ratio <= 1.0:
      raise ConfigError(f'--zerofl_mask_ratio={self.mask_ratio} is outside [0, 1]')
    if self.sparsity - self.mask_ratio < -1e-9:
      raise ConfigError(f'--zerofl_sparsity={self.sparsity} plus --zerofl_mask_ratio='
                        f'{self.mask_ratio} uploads more than the whole matrix: keep '
                        '1 - sparsity + mask_ratio at most 1')
    if self.aggregation not in AGGREGATIONS:
      raise ConfigError(f'--zerofl_aggregation={self.aggregation!r} is unknown; known: '
                        f'{", ".join(AGGREGATIONS)}')
    if self.upload not in UPLOADS:
      raise ConfigError(f'--zerofl_upload={self.upload!r} is unknown; known: '
                        f'{", ".join(UPLOADS)}')

  @property
  def density(self) -> float:
    return 1.0 - self.sparsity

  def sparsity_at(self, round_num: int) -> float:
    """The SWAT sparsity of (1-based) `round_num` under the ramp."""
    if self.ramp_rounds == 0:
      return self.sparsity
    step = min(self.ramp_steps, -(-min(max(round_num, 1), self.ramp_rounds) * self.ramp_steps
                                  // self.ramp_rounds))
    return self.sparsity if step == self.ramp_steps else self.sparsity * step / self.ramp_steps

  def at_sparsity(self, sparsity: float) -> 'ZeroFLConfig':
    """This config at a ramp step's `sparsity` (its mask ratio capped so that at most the whole
    matrix is uploaded), without a ramp."""
    return dataclasses.replace(self, sparsity=sparsity, mask_ratio=min(self.mask_ratio, sparsity),
                               ramp_rounds=0)

  @property
  def activation_density(self) -> Optional[float]:
    return None if self.activation_sparsity == 0.0 else 1.0 - self.activation_sparsity


def config_from_options(options: dict[str, Any]) -> ZeroFLConfig:
  """The config of `--zerofl_*` flag values named without the prefix (and `--omc_format`,
  `--omc_transform` for `--zerofl_compress=omc`)."""
  compress = options.get('compress', 'none')
  if compress not in COMPRESSIONS:
    raise ConfigError(f'--zerofl_compress={compress!r} is unknown; known: '
                      f'{", ".join(COMPRESSIONS)}')
  values_codec = None
  if compress == 'omc':
    try:
      values_codec = compression_process.omc_config(
          {'format': options.get('format', 'S1E4M6'),
           'transform': options.get('transform', True)}).codec
    except compression_process.ConfigError as e:
      raise ConfigError(str(e)) from None
  return ZeroFLConfig(sparsity=float(options.get('sparsity', 0.9)),
                      mask_ratio=float(options.get('mask_ratio', 0.2)),
                      activation_sparsity=float(options.get('activation_sparsity', 0.0)),
                      aggregation=options.get('aggregation', 'mean_of_senders'),
                      upload=options.get('upload', 'sparse'), values_codec=values_codec,
                      ramp_rounds=int(options.get('ramp_rounds', 0)),
                      ramp_steps=int(options.get('ramp_steps', 4)))


def swat_factory(config: ZeroFLConfig) -> pruned_dense.DenseFactory:
  """Builds every dense layer outside `SWAT_EXCLUDED` as a `SwatDense`."""

  def factory(units, name, activation=None, use_bias=True):
    if name in SWAT_EXCLUDED:
      return tf.keras.layers.Dense(units, activation=activation, use_bias=use_bias, name=name)
    return swat.SwatDense(units, config.density, config.activation_density,
                          activation=activation, use_bias=use_bias, name=name)

  return factory


def swat_model_fn(model_fn: fedavg.ModelFn, config: ZeroFLConfig) -> fedavg.ModelFn:
  """`model_fn`'s model with its SWAT layers (same variables)."""

  def build():
    with pruned_dense.building_dense(swat_factory(config)):
      return model_fn()

  return build


def swat_variables(model_config: dict[str, Any], config: ZeroFLConfig) -> list[bool]:
  """Per trainable variable of the model, whether it is a SWAT kernel."""
  with pruned_dense.building_dense(swat_factory(config)):
    model = registry.build_keras_model(model_config)
  kernels = {layer.kernel.ref() for layer in model.submodules if isinstance(layer, swat.SwatDense)}
  found = [v.ref() in kernels for v in model.trainable_variables]
  if not any(found):
    raise ConfigError('--algorithm=zerofl: the model has no dense layer to train sparsely')
  return found


def _shapes(type_list) -> list[tuple[int, ...]]:
  return [tuple(int(d) for d in t.shape) for t in type_list]


def _sizes(shapes) -> list[int]:
  return [int(np.prod(s, dtype=np.int64)) for s in shapes]


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Which trainable variables travel sparsely, and how many entries of each."""

  shapes: list
  sparse: list  # bool per variable: uploaded as (values, positions).
  swat: list  # bool per variable: a SWAT kernel.
  counts: list  # Entries uploaded per sparse variable (its size otherwise).


def _layout(config: ZeroFLConfig, weights_type, swat_vars: list[bool]) -> _Layout:
  shapes = _shapes(weights_type.trainable)
  sparse = [s and config.upload == 'sparse' for s in swat_vars]
  counts = [upload_lib.upload_count(n, config.sparsity, config.mask_ratio) if s else n
            for n, s in zip(_sizes(shapes), sparse)]
  return _Layout(shapes, sparse, list(swat_vars), counts)


def masked_weights(config: ZeroFLConfig, swat_vars: Sequence[bool],
                   weights: tff.learning.models.ModelWeights
                   ) -> tff.learning.models.ModelWeights:
  """`weights` with each SWAT kernel restricted to its top-k entries (what SWAT computes)."""
  trainable = [w * swat.top_k_mask(w, config.density) if s else w
               for w, s in zip(weights.trainable, swat_vars)]
  return tff.learning.models.ModelWeights(trainable=trainable,
                                          non_trainable=list(weights.non_trainable))


def encode_update(config: ZeroFLConfig, layout: _Layout, trained: Sequence[tf.Tensor],
                  delta: Sequence[tf.Tensor]) -> tuple[list, tf.Tensor]:
  """The upload of a client's delta and its size in bytes (without the example weight)."""
  out, nbytes = [], tf.constant(0, tf.int64)
  for t, d, shape, sparse, count in zip(trained, delta, layout.shapes, layout.sparse,
                                        layout.counts):
    if not sparse:
      out.append(d)
      nbytes += 4 * int(np.prod(shape, dtype=np.int64))
      continue
    indices = upload_lib.select(t, count)
    values = tf.gather(tf.reshape(d, [-1]), indices)
    positions = upload_lib.encode_positions(indices, int(np.prod(shape, dtype=np.int64)))
    if config.values_codec is not None:
      values = config.values_codec.encode(values)
      nbytes += config.values_codec.nbytes([count])
    else:
      nbytes += 4 * count
    out.append(collections.OrderedDict(values=values, positions=positions))
    nbytes += tf.cast(tf.size(positions), tf.int64)
  return out, nbytes


def decode_update(config: ZeroFLConfig, layout: _Layout, update: Sequence[Any]
                  ) -> tuple[list, list]:
  """(dense deltas, 0/1 masks of the entries sent) of an `encode_update` upload; the masks of
  dense variables are scalars 1."""
  deltas, sent = [], []
  for u, shape, sparse, count in zip(update, layout.shapes, layout.sparse, layout.counts):
    if not sparse:
      deltas.append(u)
      sent.append(tf.constant(1.0))
      continue
    size = int(np.prod(shape, dtype=np.int64))
    indices = upload_lib.decode_positions(u['positions'], size, count)
    values = (config.values_codec.decode(u['values'], [count])
              if config.values_codec is not None else u['values'])
    deltas.append(upload_lib.scatter(values, indices, shape))
    sent.append(swat.mask_of(indices, shape))
  return deltas, sent


def _client_work(model_fn: fedavg.ModelFn, config: ZeroFLConfig, layout: _Layout,
                 optimizer: tff.learning.optimizers.Optimizer, weights_type
                 ) -> tff.learning.templates.ClientWorkProcess:
  with tf.Graph().as_default():
    metrics_aggregation = tff.learning.metrics.sum_then_finalize(model_fn().metric_finalizers())
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(_input_spec(model_fn)))
  total_entries = float(sum(_sizes(layout.shapes)))
  sent_entries = float(sum(layout.counts))
  kept_entries = float(sum(swat.kept_count(n, config.density)
                           for n, s in zip(_sizes(layout.shapes), layout.swat) if s))

  def train_client(model, weights, dataset):
    trainable = model.trainable_variables
    for v, x in zip(trainable, weights.trainable):
      v.assign(x)
    for v, x in zip(model.non_trainable_variables, weights.non_trainable):
      v.assign(x)
    initial = list(weights.trainable)

    def train_step(state, batch):
      num_examples, finite, opt_state = state
      with tf.GradientTape() as tape:
        output = model.forward_pass(batch, training=True)
      grads = tape.gradient(output.loss, trainable)
      opt_state, updated = optimizer.next(opt_state, tuple(trainable), tuple(grads))
      for v, x in zip(trainable, updated):
        v.assign(x)
      return (num_examples + tf.cast(output.num_examples, tf.int64),
              tf.logical_and(finite, non_finite.all_finite(updated)), opt_state)

    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
    num_examples, finite, _ = dataset.reduce(
        (tf.constant(0, tf.int64), tf.constant(True), optimizer.initialize(specs)), train_step)
    trained = [tf.identity(v) for v in trainable]
    finite = tf.logical_and(finite, non_finite.all_finite(trained))
    # A diverged client uploads a zero delta (positions from its initial weights), weight 0.
    trained = [tf.where(finite, t, i) for t, i in zip(trained, initial)]
    delta = [i - t for i, t in zip(initial, trained)]
    update, nbytes = encode_update(config, layout, trained, delta)
    entered = tf.add_n([
        tf.reduce_sum(tf.maximum(swat.top_k_mask(t, config.density)
                                 - swat.top_k_mask(i, config.density), 0.0))
        for t, i, s in zip(trained, initial, layout.swat) if s])
    client_metrics = collections.OrderedDict(
        client_bytes_up=tf.cast(nbytes + 4, tf.float32),  # + the float32 example weight.
        uploaded_fraction=tf.constant(sent_entries / total_entries),
        top_k_changes=entered / kept_entries)
    return (tff.learning.templates.ClientResult(
        update=update, update_weight=tf.where(finite, tf.cast(num_examples, tf.float32), 0.0)),
            model.report_local_unfinalized_metrics(), client_metrics,
            tf.cast(tf.logical_not(finite), tf.int32))

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update_tf(weights, dataset):
    model = model_fn()
    return tf.function(lambda w, d: train_client(model, w, d))(weights, dataset)

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, weights, data):
    result, metrics, client_metrics, dropped = tff.federated_map(client_update_tf,
                                                                 (weights, data))
    measurements = collections.OrderedDict(train=metrics_aggregation(metrics))
    for name in ('client_bytes_up', 'uploaded_fraction', 'top_k_changes'):
      measurements[name] = tff.federated_mean(client_metrics[name])
    measurements['non_finite_clients'] = tff.federated_sum(dropped)
    return tff.templates.MeasuredProcessOutput(state, result,
                                               tff.federated_zip(measurements))

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def _input_spec(model_fn: fedavg.ModelFn):
  with tf.Graph().as_default():
    return model_fn().input_spec


def _sparse_mean(config: ZeroFLConfig, layout: _Layout, upload_type
                 ) -> tff.templates.AggregationProcess:
  """Example-weighted mean of the uploads, decoded by the server as they arrive: each sent
  entry over the clients that sent it (`mean_of_senders`) or over all (`zero_fill`)."""
  entry_shape = lambda shape, sparse: shape if sparse else ()  # noqa: E731

  @tff.tensorflow.computation
  def zero():
    return ([tf.zeros(s, tf.float32) for s in layout.shapes],
            [tf.zeros(entry_shape(s, p), tf.float32)
             for s, p in zip(layout.shapes, layout.sparse)],
            tf.constant(0.0))

  accumulator_type = zero.type_signature.result

  @tff.tensorflow.computation(accumulator_type, (upload_type, tf.float32))
  def accumulate(accumulator, value):
    totals, entry_weights, weight_sum = accumulator
    update, weight = value
    deltas, sent = decode_update(config, layout, update)
    return ([t + weight * d for t, d in zip(totals, deltas)],
            [e + weight * s for e, s in zip(entry_weights, sent)], weight_sum + weight)

  @tff.tensorflow.computation(accumulator_type, accumulator_type)
  def merge(a, b):
    return tf.nest.map_structure(tf.add, a, b)

  @tff.tensorflow.computation(accumulator_type)
  def report(accumulator):
    totals, entry_weights, weight_sum = accumulator
    means = []
    for t, e, sparse in zip(totals, entry_weights, layout.sparse):
      if sparse and config.aggregation == 'mean_of_senders':
        mean = tf.where(e > 0, t / tf.where(e > 0, e, 1.0), 0.0)
        # Every client dropped: a non-finite aggregate, which the finalizer rejects (as for
        # the dense variables' 0/0).
        means.append(tf.where(weight_sum > 0, mean, np.nan))
      else:
        means.append(t / weight_sum)
    return means

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(upload_type, tff.CLIENTS),
                             tff.FederatedType(np.float32, tff.CLIENTS))
  def next_fn(state, value, weight):
    mean = tff.federated_aggregate(tff.federated_zip((value, weight)), zero(), accumulate,
                                   merge, report)
    return tff.templates.MeasuredProcessOutput(state=state, result=mean,
                                               measurements=tff.federated_value((), tff.SERVER))

  return tff.templates.AggregationProcess(init_fn, next_fn)


def build_zerofl(model_fn: fedavg.ModelFn, config: ZeroFLConfig, swat_vars: Sequence[bool],
                 client_optimizer: tff.learning.optimizers.Optimizer,
                 server_optimizer: tff.learning.optimizers.Optimizer
                 ) -> tff.learning.templates.LearningProcess:
  """The ZeroFL learning process on `model_fn`'s (plain) model (see the module docstring);
  `swat_vars` marks its SWAT kernels (`swat_variables`)."""
  blocks = fedavg.fedavg_blocks(model_fn, client_optimizer, server_optimizer)
  weights_type = blocks['initial_model_weights_fn'].type_signature.result
  if len(swat_vars) != len(weights_type.trainable):
    raise ValueError(f'{len(swat_vars)} SWAT flags for {len(weights_type.trainable)} '
                     'trainable variables')
  layout = _layout(config, weights_type, list(swat_vars))
  client_work = _client_work(swat_model_fn(model_fn, config), config, layout,
                             client_optimizer, weights_type)
  upload_type = client_work.next.type_signature.result.result.member.update
  return composition.compose(
      initial_model_weights_fn=blocks['initial_model_weights_fn'],
      distributor=blocks['distributor'], client_work=client_work,
      aggregator=_sparse_mean(config, layout, upload_type), finalizer=blocks['finalizer'],
      measured_bytes_up=True)


class ZeroFLTraining(stages.StagedTraining):
  """One process per SWAT sparsity (one without a ramp); evaluation and the saved model use
  the top-k weights of the round's sparsity."""

  def __init__(self, build: Callable[[ZeroFLConfig], tff.learning.templates.LearningProcess],
               model_config, model_fn, config: ZeroFLConfig, swat_vars: Sequence[bool]):
    self._build, self._model_config, self._model_fn = build, model_config, model_fn
    self._config, self._swat_vars = config, list(swat_vars)
    self._stages: dict[str, stages.Stage] = {}

  def stage_key(self, round_num: int) -> str:
    return f'sparsity {self._config.sparsity_at(round_num):g}'

  def build_stage(self, key: str) -> stages.Stage:
    if key not in self._stages:
      config = self._config.at_sparsity(float(key.split()[1]))
      process = self._build(config)
      weights_type = process.get_model_weights.type_signature.result

      @tff.tensorflow.computation(weights_type)
      def top_k(weights):
        return masked_weights(config, self._swat_vars, weights)

      self._stages[key] = stages.Stage(
          key, process, self._model_config, self._model_fn,
          lambda state, process=process, top_k=top_k: top_k(process.get_model_weights(state)))
    return self._stages[key]

  def convert_state(self, state, from_stage: stages.Stage, to_stage: stages.Stage):
    """Into the next ramp step: the same dense server model and server optimizer state."""
    process = to_stage.train_process
    new_state = process.set_model_weights(
        process.initialize(), from_stage.train_process.get_model_weights(state))
    return new_state._replace(finalizer=state.finalizer)


@algorithms.register_staged('zerofl', 'ZeroFL: clients train sparsely (SWAT, top-k weights and '
                            'activations) and upload the top-k entries of their update '
                            '(--zerofl_* flags)')
def _build(context: algorithms.BuildContext) -> stages.StagedTraining:
  config = config_from_options(context.options)
  swat_vars = swat_variables(context.model_config, config)
  model_fn = context.make_model_fn(context.model_config)
  build = lambda c: build_zerofl(  # noqa: E731
      model_fn, c, swat_vars, context.hparams.build_client_optimizer(),
      context.hparams.build_server_optimizer())
  return ZeroFLTraining(build, context.model_config, model_fn, config, swat_vars)
