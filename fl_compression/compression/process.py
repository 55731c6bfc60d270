"""Online Model Compression (OMC) and FedAQT as `tff.learning` processes composed from TFF blocks.

Both are FedAvg with a codec (`codecs.py`) between the float server model and the clients:

- **Distributor**: the server encodes the trainable variables the codec covers (weight
  matrices by default) and broadcasts the compressed form with the other variables in float32
  and the round number; its state counts the rounds.
- **Client work**: the client decodes the broadcast, trains, and holds every *selected*
  variable compressed between steps: after each optimizer step the variable is recompressed
  (`codec.requantize`), so the weights it computes with are always values of the format
  (or stochastically, `--omc_rounding`/`--aqt_rounding=stochastic`, so that steps smaller
  than half a quantum are kept in expectation instead of always rounding back).
  Gradients are float32 (for FedAQT: the straight-through gradient with respect to the
  quantized weights; its clients also fake-quantize the inputs of the Conformer's dense
  layers per tensor, `aqt.QuantizedInput`). With `fraction < 1` (OMC's partial variable quantization) a client
  compresses only that fraction of the covered variables, chosen per client and round by a
  stateless draw seeded by the round number and a fingerprint of the client's first batch, so
  a resumed run draws the same and every variable gets full-precision updates from some
  clients. `fedsgd` mode (FedAQT's FedSGD variant) returns the example-weighted mean gradient
  at the received weights instead of a trained delta.
- **Upload**: the model delta `initial - trained`, encoded with the codec for the covered
  variables (`upload='compressed'`, OMC) or float32 (`upload='float'`, FedAQT: gradients
  stay full precision).
- **Aggregator**: example-weighted mean; compressed uploads are decoded by the server inside
  `tff.federated_aggregate`'s accumulate, so what crosses the network is the packed form.
- **Finalizer**: TFF's `build_apply_optimizer_finalizer` on the float server model.

The measurement `client_work/held_parameter_bytes` is the mean over clients of the bytes of the
parameters a client holds in compressed form (selected variables at their packed size, the rest
float32): what a device implementation keeps between steps. In this simulation the client's
Keras model still has float32 variables; their values are kept on the format's grid (every
selected variable is recompressed after each step), so training sees exactly the compressed
model, but the simulation's own memory is not reduced; the device-style decompress-on-use
step (per layer, decoded again in the backward pass) is `on_the_fly.py`.
"""

import collections
import dataclasses
from typing import Any, Callable, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.compression import aqt
from fl_compression.compression import codecs
from fl_compression.compression import float_format as ff
from fl_compression.compression import omc
from fl_compression.importance import layers as importance_layers
from fl_compression.importance import targets as importance_targets
from fl_compression.learning import accounting
from fl_compression.learning import algorithms
from fl_compression.learning import composition
from fl_compression.learning import fedavg
from fl_compression.learning import stages
from fl_compression.learning import non_finite
from fl_compression.models import pruned_dense
from fl_compression.models import registry

Codec = Union[codecs.OmcCodec, codecs.AqtCodec]
SCOPES = ('weights', 'all')
UPLOADS = ('compressed', 'float')
CLIENT_MODES = ('fedavg', 'fedsgd')


class ConfigError(ValueError):
  """A bad compression setting; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
  """Which variables are compressed, how, and what travels."""

  codec: Codec
  scope: str = 'weights'  # 'weights': weight matrices only; 'all': every trainable variable.
  fraction: float = 1.0  # Of the covered variables, the fraction each client compresses.
  upload: str = 'compressed'
  client_mode: str = 'fedavg'
  # FedAQT: inputs of the Conformer's dense layers fake-quantized per tensor (0: off).
  activation_bits: int = 0
  # One codec per trainable variable (the model's order) in place of `codec` for all, e.g.
  # from `--omc_allocation=importance` (`importance_codecs`); empty: `codec` everywhere.
  variable_codecs: tuple = ()

  def __post_init__(self):
    if self.scope not in SCOPES:
      raise ConfigError(f'--omc_scope={self.scope!r} is unknown; known: {", ".join(SCOPES)}')
    if not 0.0 <= self.fraction <= 1.0:
      raise ConfigError(f'--omc_fraction={self.fraction} is outside [0, 1]')
    if self.upload not in UPLOADS:
      raise ConfigError(f'upload={self.upload!r} is unknown; known: {", ".join(UPLOADS)}')
    if self.client_mode not in CLIENT_MODES:
      raise ConfigError(f'--aqt_variant={self.client_mode!r} is unknown; known: '
                        f'{", ".join(CLIENT_MODES)}')

  def covers(self, shape: Sequence[int]) -> bool:
    return self.scope == 'all' or omc.is_weight_matrix(shape)

  def codec_at(self, index: int) -> Codec:
    """The codec of trainable variable `index`."""
    return self.variable_codecs[index] if self.variable_codecs else self.codec


def _rounding(options: dict, flag: str) -> str:
  """The clients' requantization rounding from `options` (errors name `--flag`)."""
  rounding = options.get('rounding', 'nearest')
  if rounding not in codecs.ROUNDINGS:
    raise ConfigError(f'--{flag}={rounding!r} is unknown; known: {", ".join(codecs.ROUNDINGS)}')
  return rounding


def omc_config(options: dict) -> CompressionConfig:
  """OMC settings from `--omc_*` flag values named without the prefix."""
  try:
    fmt = ff.parse(options.get('format', 'S1E4M6'))
  except ValueError as e:
    raise ConfigError(f'--omc_format={options.get("format")!r}: {e}') from None
  rounding = _rounding(options, 'omc_rounding')
  return CompressionConfig(codecs.OmcCodec(fmt, bool(options.get('transform', True)), rounding),
                           scope=options.get('scope', 'weights'),
                           fraction=float(options.get('fraction', 1.0)), upload='compressed')


def aqt_config(options: dict) -> CompressionConfig:
  """FedAQT settings from `--aqt_*` flag values named without the prefix."""
  bits = int(options.get('bits', 8))
  rounding = _rounding(options, 'aqt_rounding')
  try:
    codec = codecs.AqtCodec(bits, rounding)
  except ValueError as e:
    raise ConfigError(f'--aqt_bits={bits}: {e}') from None
  return CompressionConfig(codec, scope='weights', fraction=1.0, upload='float',
                           client_mode=options.get('variant', 'fedavg'),
                           activation_bits=bits if options.get('activations', True) else 0)


# The algorithms this module builds, by `--algorithm` (and `--fp_compress`) name.
CONFIGS: dict[str, Callable[[dict], CompressionConfig]] = {'omc': omc_config,
                                                           'fedaqt': aqt_config}


def client_model_fn(model_fn: fedavg.ModelFn, config: CompressionConfig) -> fedavg.ModelFn:
  """The model clients train: `model_fn`'s, with quantized activations when configured."""
  if not config.activation_bits:
    return model_fn

  def quantized_model_fn():
    with pruned_dense.wrapping_dense(
        lambda layer: aqt.QuantizedInput(layer, config.activation_bits)):
      return model_fn()

  return quantized_model_fn


def _shapes(type_list) -> list[tuple[int, ...]]:
  return [tuple(int(d) for d in t.shape) for t in type_list]


def batch_fingerprint(batch) -> tf.Tensor:
  """An int32 fingerprint of a batch: the bits of the float32 sum of all its values."""
  total = tf.constant(0.0, tf.float32) + tf.add_n(
      [tf.reduce_sum(tf.cast(leaf, tf.float32)) for leaf in tf.nest.flatten(batch)])
  return tf.bitcast(total, tf.int32)


def fingerprint(dataset: tf.data.Dataset) -> tf.Tensor:
  """A client's fingerprint: `batch_fingerprint` of its first batch (0 for no data).

  The client work takes it from the first batch it trains on, without reading the data twice;
  this is the same value for a dataset. A dataset reduction rather than a Python loop over the
  dataset: traced without AutoGraph (which falls back to plain Python when it cannot read a
  function's source), a Python loop over a dataset never ends.
  """
  return dataset.take(1).reduce(tf.constant(0, tf.int32),
                                lambda _, batch: batch_fingerprint(batch))


def covered_variables(config: CompressionConfig, weights_type) -> list[bool]:
  """Which trainable variables of a model with `weights_type` the codec covers."""
  covered = [config.covers(s) for s in _shapes(weights_type.trainable)]
  if not any(covered):
    raise ConfigError('the model has no weight matrix to compress')
  return covered


def encode_for_clients(config: CompressionConfig, covered: list[bool],
                       weights: tff.learning.models.ModelWeights, round_num: tf.Tensor
                       ) -> collections.OrderedDict:
  """What the server broadcasts for round `round_num`: the covered variables encoded, the
  others as they are, and the round number (it seeds the clients' partial selection)."""
  trainable = [config.codec_at(i).encode(w) if c else w
               for i, (w, c) in enumerate(zip(weights.trainable, covered))]
  return collections.OrderedDict(trainable=trainable, non_trainable=weights.non_trainable,
                                 round=round_num)


def encode_update(config: CompressionConfig, covered: list[bool], update: Sequence[tf.Tensor]
                  ) -> list:
  """What a client uploads of its model delta: the covered variables encoded with the codec
  (`upload='compressed'`), everything else float32."""
  if config.upload != 'compressed':
    return list(update)
  return [config.codec_at(i).encode(u) if c else u
          for i, (u, c) in enumerate(zip(update, covered))]


def _distributor(config: CompressionConfig, weights_type, covered: list[bool]
                 ) -> tff.templates.MeasuredProcess:

  @tff.tensorflow.computation(weights_type, tf.int32)
  def encode(weights, rounds_done):
    return encode_for_clients(config, covered, weights, rounds_done + 1)

  @tff.tensorflow.computation(tf.int32)
  def increment(rounds_done):
    return rounds_done + 1

  @tff.federated_computation
  def init_fn():
    return tff.federated_value(np.int32(0), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(weights_type, tff.SERVER))
  def next_fn(rounds_done, weights):
    encoded = tff.federated_map(encode, (weights, rounds_done))
    return tff.templates.MeasuredProcessOutput(
        state=tff.federated_map(increment, rounds_done),
        result=tff.federated_broadcast(encoded),
        measurements=tff.federated_value((), tff.SERVER))

  return tff.learning.templates.DistributionProcess(init_fn, next_fn)


def broadcast_type(config: CompressionConfig, weights_type, covered: list[bool]) -> tff.Type:
  """The type of what one client receives: `encode_for_clients`'s value."""
  return _distributor(config, weights_type, covered).next.type_signature.result.result.member


def _client_work(model_fn: fedavg.ModelFn, config: CompressionConfig,
                 optimizer: tff.learning.optimizers.Optimizer, weights_type, broadcast_type,
                 covered: list[bool]) -> tff.learning.templates.ClientWorkProcess:
  shapes = _shapes(weights_type.trainable)
  codec = config.codec  # Its rounding is every variable's.
  covered_index = [i for i, c in enumerate(covered) if c]
  float_bytes = [4 * int(np.prod(s, dtype=np.int64)) for s in shapes]
  codec_bytes = [config.codec_at(i).nbytes(s) if c else b
                 for i, (s, c, b) in enumerate(zip(shapes, covered, float_bytes))]
  non_trainable_bytes = sum(4 * int(np.prod(t.shape, dtype=np.int64))
                            for t in weights_type.non_trainable)
  with tf.Graph().as_default():
    metrics_aggregation = tff.learning.metrics.sum_then_finalize(model_fn().metric_finalizers())
  data_type = tff.SequenceType(tff.types.tensorflow_to_type(_input_spec(model_fn)))

  def make_client_update():
    model = model_fn()

    @tf.function
    def client_update(broadcast, dataset):
      return train_client(model, broadcast, dataset)

    return client_update

  def train_client(model, broadcast, dataset):
    initial = [config.codec_at(i).decode(e, s) if c else e
               for i, (e, s, c) in enumerate(zip(broadcast['trainable'], shapes, covered))]
    for v, x in zip(model.trainable_variables, initial):
      v.assign(x)
    for v, x in zip(model.non_trainable_variables, broadcast['non_trainable']):
      v.assign(x)
    # Which covered variables this client holds compressed this round: all or none are known
    # when the program is built; a partial selection is drawn from the round number and the
    # client's fingerprint, which stochastic rounding also seeds from. The fingerprint is
    # taken from the first batch as it is trained on (the data is read once), and only when
    # a partial selection or stochastic rounding needs it.
    partial = 0.0 < config.fraction < 1.0
    needs_fingerprint = partial or codec.rounding != 'nearest'
    trainable = model.trainable_variables

    def selection(client_fingerprint) -> list:
      selected: list = [c and config.fraction == 1.0 for c in covered]
      if partial:
        chosen = omc.select_compressed(len(covered_index), config.fraction,
                                       tf.stack([broadcast['round'], client_fingerprint]))
        for j, i in enumerate(covered_index):
          selected[i] = chosen[j]
      return selected

    def with_fingerprint(client_fingerprint, num_examples, batch):
      if not needs_fingerprint:
        return client_fingerprint
      # tf.equal: in the graph TFF traces, `==` on tensors compares identity, not values.
      return tf.where(tf.equal(num_examples, 0), batch_fingerprint(batch), client_fingerprint)

    def recompress(values, client_fingerprint, examples_so_far):
      # A distinct stateless seed per (round, client, step, variable) for stochastic rounding.
      def seed(i):
        return tf.stack([tf.cast(broadcast['round'], tf.int64) * 1_000_003 + i,
                         tf.cast(client_fingerprint, tf.int64) * 1_000_003 + examples_so_far])

      # A drawn selection picks with `tf.where`, not `tf.cond`: inside the dataset reduction a
      # cond runs each branch as a separate function call, which cost a quarter of a tiny
      # model's client step for 60 matrices; requantizing all of them is cheaper.
      selected = selection(client_fingerprint)
      out = []
      for i, x in enumerate(values):
        if isinstance(selected[i], bool):
          out.append(config.codec_at(i).requantize(x, seed(i)) if selected[i] else x)
        else:
          out.append(tf.where(selected[i], config.codec_at(i).requantize(x, seed(i)), x))
      return out

    # The received values are format values already; the unselected ones train in float32.
    def train_step(state, batch):
      num_examples, client_fingerprint, finite, opt_state = state
      client_fingerprint = with_fingerprint(client_fingerprint, num_examples, batch)
      with tf.GradientTape() as tape:
        output = model.forward_pass(batch, training=True)
      grads = tape.gradient(output.loss, trainable)
      opt_state, updated = optimizer.next(opt_state, tuple(trainable), tuple(grads))
      # Checked before requantizing: a codec can turn NaN into finite values (an integer
      # quantizer casts NaN to 0), which would hide a diverged client from the check below.
      finite = tf.logical_and(finite, non_finite.all_finite(updated))
      for v, x in zip(trainable, recompress(updated, client_fingerprint, num_examples)):
        v.assign(x)
      return (num_examples + tf.cast(output.num_examples, tf.int64), client_fingerprint,
              finite, opt_state)

    def gradient_step(state, batch):
      num_examples, client_fingerprint, finite, grad_sum = state
      client_fingerprint = with_fingerprint(client_fingerprint, num_examples, batch)
      with tf.GradientTape() as tape:
        output = model.forward_pass(batch, training=True)
      grads = tape.gradient(output.loss, trainable)
      n = tf.cast(output.num_examples, tf.float32)
      return (num_examples + tf.cast(output.num_examples, tf.int64), client_fingerprint,
              tf.logical_and(finite, non_finite.all_finite(grads)),
              tuple(s + n * g for s, g in zip(grad_sum, grads)))

    start = (tf.constant(0, tf.int64), tf.constant(0, tf.int32), tf.constant(True))
    if config.client_mode == 'fedavg':
      specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
      num_examples, client_fingerprint, finite, _ = dataset.reduce(
          start + (optimizer.initialize(specs),), train_step)
      update = [a - b for a, b in zip(initial, trainable)]
    else:
      num_examples, client_fingerprint, finite, grad_sum = dataset.reduce(
          start + (tuple(tf.zeros_like(v) for v in trainable),), gradient_step)
      denominator = tf.maximum(tf.cast(num_examples, tf.float32), 1.0)
      update = [s / denominator for s in grad_sum]
    finite = tf.logical_and(finite, non_finite.all_finite(update))
    update = [tf.where(finite, u, tf.zeros_like(u)) for u in update]
    weight = tf.where(finite, tf.cast(num_examples, tf.float32), 0.0)
    update = encode_update(config, covered, update)
    selected = selection(client_fingerprint)
    held = tf.add_n([tf.where(selected[i], float(codec_bytes[i]), float(float_bytes[i]))
                     for i in range(len(shapes))]) + float(non_trainable_bytes)
    return (tff.learning.templates.ClientResult(update=update, update_weight=weight),
            model.report_local_unfinalized_metrics(), held,
            tf.cast(tf.logical_not(finite), tf.int32))

  @tff.tensorflow.computation(broadcast_type, data_type)
  def client_update_tf(broadcast, dataset):
    return make_client_update()(broadcast, dataset)

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(broadcast_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, broadcast, data):
    result, metrics, held, dropped = tff.federated_map(client_update_tf, (broadcast, data))
    measurements = tff.federated_zip(collections.OrderedDict(
        train=metrics_aggregation(metrics), held_parameter_bytes=tff.federated_mean(held),
        non_finite_clients=tff.federated_sum(dropped)))
    return tff.templates.MeasuredProcessOutput(state, result, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)


def _input_spec(model_fn: fedavg.ModelFn):
  with tf.Graph().as_default():
    return model_fn().input_spec


def _decoding_mean(codecs_by_variable: Sequence[Codec], upload_type, shapes,
                   covered: list[bool]) -> tff.templates.AggregationProcess:
  """Example-weighted mean of compressed updates, decoded by the server as they arrive."""
  @tff.tensorflow.computation
  def zero():
    return [tf.zeros(s, tf.float32) for s in shapes], tf.constant(0.0)

  accumulator_type = zero.type_signature.result

  @tff.tensorflow.computation(accumulator_type, (upload_type, tf.float32))
  def accumulate(accumulator, value):
    total, weight_sum = accumulator
    update, weight = value
    decoded = [codec.decode(u, s) if c else u
               for codec, u, s, c in zip(codecs_by_variable, update, shapes, covered)]
    return [t + weight * d for t, d in zip(total, decoded)], weight_sum + weight

  @tff.tensorflow.computation(accumulator_type, accumulator_type)
  def merge(a, b):
    return [x + y for x, y in zip(a[0], b[0])], a[1] + b[1]

  @tff.tensorflow.computation(accumulator_type)
  def report(accumulator):
    # No division guard: with every client dropped (weight 0) the mean is 0/0, which the
    # finalizer rejects, leaving the server model unchanged (as TFF's MeanFactory does).
    total, weight_sum = accumulator
    return [t / weight_sum for t in total]

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


def client_blocks(model_fn: fedavg.ModelFn, config: CompressionConfig,
                  client_optimizer: tff.learning.optimizers.Optimizer, weights_type,
                  broadcast_type, covered: list[bool]):
  """The client work on `model_fn`'s model and the aggregator of its uploads, for a
  distributor that broadcasts `encode_for_clients` values (of type `broadcast_type`)."""
  client_work = _client_work(client_model_fn(model_fn, config), config, client_optimizer,
                             weights_type, broadcast_type, covered)
  upload_type = client_work.next.type_signature.result.result.member.update
  if config.upload == 'compressed':
    shapes = _shapes(weights_type.trainable)
    aggregator = _decoding_mean([config.codec_at(i) for i in range(len(shapes))], upload_type,
                                shapes, covered)
  else:
    aggregator = tff.aggregators.MeanFactory().create(upload_type, tff.TensorType(np.float32))
  return client_work, aggregator


def build_compressed_fed_avg(model_fn: fedavg.ModelFn, config: CompressionConfig,
                             client_optimizer: tff.learning.optimizers.Optimizer,
                             server_optimizer: tff.learning.optimizers.Optimizer
                             ) -> tff.learning.templates.LearningProcess:
  """The OMC or FedAQT learning process (see the module docstring)."""
  blocks = fedavg.fedavg_blocks(model_fn, client_optimizer, server_optimizer)
  weights_type = blocks['initial_model_weights_fn'].type_signature.result
  covered = covered_variables(config, weights_type)
  distributor = _distributor(config, weights_type, covered)
  client_work, aggregator = client_blocks(model_fn, config, client_optimizer, weights_type,
                                          distributor.next.type_signature.result.result.member,
                                          covered)
  return composition.compose(
      initial_model_weights_fn=blocks['initial_model_weights_fn'], distributor=distributor,
      client_work=client_work, aggregator=aggregator, finalizer=blocks['finalizer'])


def client_traffic(config: CompressionConfig, weights_type) -> collections.OrderedDict:
  """Bytes one client of the process receives and sends for a model of `weights_type`, from
  the types of the distributor's broadcast and of the encoded upload with its example weight
  (the values the process sends), without tracing a model: sizes any model configuration."""
  covered = covered_variables(config, weights_type)
  distributor = _distributor(config, weights_type, covered)

  @tff.tensorflow.computation(weights_type.trainable)
  def upload(update):
    return encode_update(config, covered, update)

  result_type = tff.StructType([upload.type_signature.result, tff.TensorType(np.float32)])
  return collections.OrderedDict(
      client_bytes_down=accounting.type_nbytes(distributor.next.type_signature.result.result),
      client_bytes_up=accounting.type_nbytes(result_type))


def float_client_traffic(weights_type) -> collections.OrderedDict:
  """The same for FedAvg: the float32 model down, its trainable delta and weight up."""
  return collections.OrderedDict(
      client_bytes_down=accounting.type_nbytes(weights_type),
      client_bytes_up=accounting.type_nbytes(
          tff.StructType([weights_type.trainable, tff.TensorType(np.float32)])))


def weights_type_of(model_config: dict) -> tff.Type:
  """The `ModelWeights` type of a model configuration (the model is built, not traced)."""
  model = registry.build_keras_model(model_config)
  spec = lambda variables: [tff.TensorType(v.dtype.as_numpy_dtype, v.shape)  # noqa: E731
                            for v in variables]
  return tff.types.to_type(tff.learning.models.ModelWeights(
      trainable=spec(model.trainable_variables), non_trainable=spec(model.non_trainable_variables)))


def float_parameter_bytes(weights_type) -> int:
  """Bytes of the float32 model (the FedAvg client's parameters), for ratios."""
  return sum(4 * int(np.prod(t.shape, dtype=np.int64))
             for t in list(weights_type.trainable) + list(weights_type.non_trainable))


ALLOCATIONS = ('uniform', 'importance')


def importance_codecs(codec: codecs.OmcCodec, names: Sequence[str],
                      ranking: dict[str, Any]) -> tuple:
  """Per trainable variable, the codec of `--omc_allocation=importance`: encoder blocks ordered
  from most ambient to most critical by the layer-importance ranking, the most ambient third
  (n // 3 blocks) get one mantissa bit fewer than `codec`'s format, the most critical third one
  more, the rest and every variable outside the blocks `codec`'s; blocks of equal size keep the
  total client parameter bytes of the uniform format."""
  order = list(ranking['ambient_first'])
  third = len(order) // 3
  shift = {block: -1 for block in order[:third]}
  shift.update({block: 1 for block in order[len(order) - third:]})
  found = []
  for name in names:
    part = importance_layers.block_part(name)
    step = shift.get(part[0], 0) if part is not None else 0
    fmt = ff.FloatFormat(codec.fmt.exponent_bits, codec.fmt.mantissa_bits + step)
    found.append(dataclasses.replace(codec, fmt=fmt))
  return tuple(found)


def _build_variant(config: CompressionConfig, context: algorithms.BuildContext
                   ) -> stages.StagedTraining:
  options = context.options
  allocation = options.get('allocation', 'uniform')
  if allocation not in ALLOCATIONS:
    raise ConfigError(f'--omc_allocation={allocation!r} is unknown; known: '
                      f'{", ".join(ALLOCATIONS)}')
  if (allocation == 'importance') != bool(options.get('ranking')):
    raise ConfigError('--omc_allocation=importance needs --omc_ranking, and --omc_ranking '
                      'applies to it only')
  if allocation == 'importance':
    try:
      ranking = importance_targets.load_ranking(options['ranking'], context.model_config,
                                                'omc_ranking')
    except importance_targets.TargetError as e:
      raise ConfigError(str(e)) from None
    config = dataclasses.replace(config, variable_codecs=importance_codecs(
        config.codec, registry.variable_names(context.model_config)[0], ranking))
  model_fn = context.make_model_fn(context.model_config)
  learning_process = build_compressed_fed_avg(
      model_fn, config, context.hparams.build_client_optimizer(),
      context.hparams.build_server_optimizer())
  return stages.StagedTraining(learning_process, context.model_config, model_fn)


@algorithms.register_staged('omc', 'online model compression: clients hold and exchange weight '
                            'matrices in a low-bit float format (--omc_* flags)')
def _build_omc(context: algorithms.BuildContext) -> stages.StagedTraining:
  return _build_variant(omc_config(context.options), context)


@algorithms.register_staged('fedaqt', 'FedAQT: clients receive and train a low-bit integer '
                            'model, the server keeps the float model (--aqt_* flags)')
def _build_fedaqt(context: algorithms.BuildContext) -> stages.StagedTraining:
  return _build_variant(aqt_config(context.options), context)
