"""Speech recognizers: Conformer-CTC, named configurations, and the `tff.learning` model.

The CTC Keras model maps (features [B, T, 80], feature_length [B]) to (logits [B, T/4, vocab],
logit_length [B]); the transducer (`transducer.py`) also takes the labels. `AsrVariableModel`
trains either with its own loss (blank = token 0) on padded batches
`{features, labels, feature_length, label_length}`; `greedy_decode` transcribes with either.
"""

import collections
import copy
import dataclasses

import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.models import conformer
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.models import transducer


def canonical_config(config: registry.ModelConfig, ignore=()) -> registry.ModelConfig:
  """`config` without the keys `ignore`, its encoder with every field (a config saved before a
  field existed, e.g. `block_output_norm`, compares equal to one of the same model today)."""
  return {k: conformer.with_defaults(v) if k == 'encoder' else v
          for k, v in config.items() if k not in ignore}


def encoder_config(config: registry.ModelConfig) -> conformer.ConformerConfig:
  return conformer.ConformerConfig(**config['encoder'])


@registry.register('conformer_ctc')
def build_conformer_ctc(config: registry.ModelConfig) -> tf.keras.Model:
  """config: {'name': 'conformer_ctc', 'encoder': {ConformerConfig fields}, 'vocab_size': V}."""
  tf.keras.utils.set_random_seed(int(config.get('seed', 0)))
  encoder_cfg = encoder_config(config)
  features = tf.keras.Input(shape=(None, encoder_cfg.num_mel_bins), name='features')
  lengths = tf.keras.Input(shape=(), dtype=tf.int32, name='feature_length')
  encodings, out_lengths = conformer.ConformerEncoder(
      encoder_cfg, pruning=conformer.encoder_plan(config), name='encoder')(
      features, lengths)
  logits = pruned_dense.plain_dense(config['vocab_size'], 'ctc_head')(encodings)
  return tf.keras.Model([features, lengths], [logits, out_lengths], name='conformer_ctc')


def tiny_config(vocab_size: int, seed: int = 0) -> registry.ModelConfig:
  """The CPU-demo and test size: 4 blocks of dimension 96, CTC head."""
  return {'name': 'conformer_ctc', 'encoder': dict(_TINY_ENCODER), 'vocab_size': vocab_size,
          'seed': seed}


_TINY_ENCODER = dataclasses.asdict(conformer.ConformerConfig(
    num_blocks=4, model_dim=96, num_heads=4, conv_kernel_size=15, num_groups=8))


def deep_config(vocab_size: int, seed: int = 0, model_dim: int = 64) -> registry.ModelConfig:
  """16 encoder blocks (GroupNorm), dimension 64 (about 1.7M parameters, like the layer
  heterogeneity paper's 16-layer 1.6M model) or `model_dim` (48: `deep_narrow`): for ranking
  layers by importance."""
  return {'name': 'conformer_ctc',
          'encoder': dict(_TINY_ENCODER, num_blocks=16, model_dim=model_dim),
          'vocab_size': vocab_size, 'seed': seed}


def _pre_ln(config: registry.ModelConfig) -> registry.ModelConfig:
  """`config` with a Pre-LN stack: no LayerNorm at the end of each block, one after the last."""
  config['encoder'] = dict(config['encoder'], block_output_norm=False)
  return config


def micro_config(vocab_size: int, seed: int = 0) -> registry.ModelConfig:
  """2 blocks of dimension 32 (about 82k parameters): every kind of layer of `tiny`, in the
  smallest model that has two blocks. For tests and smoke runs, not for WER."""
  return {'name': 'conformer_ctc', 'encoder': dict(_MICRO_ENCODER), 'vocab_size': vocab_size,
          'seed': seed}


_MICRO_ENCODER = dict(_TINY_ENCODER, num_blocks=2, model_dim=32, num_heads=4, num_groups=4)


def wide_config(vocab_size: int, seed: int = 0) -> registry.ModelConfig:
  """`tiny` at twice the width (4 blocks of dimension 192): about 4x its parameters, for
  measuring how the cost of pruning changes with model size."""
  return {'name': 'conformer_ctc', 'encoder': dict(_TINY_ENCODER, model_dim=192),
          'vocab_size': vocab_size, 'seed': seed}


def _encoder(num_blocks, model_dim, num_heads):
  """Gulati et al. 2020, Table 1: convolution kernel 32; GroupNorm with 8 groups."""
  return dataclasses.asdict(conformer.ConformerConfig(
      num_blocks=num_blocks, model_dim=model_dim, num_heads=num_heads, conv_kernel_size=32,
      num_groups=8))


# Word-piece vocabulary of the published models (Gulati et al. 2020: 1k; the Federated Pruning
# paper's model: 4,096).
PUBLISHED_VOCAB_SIZE = 1024
PAPER_TRANSDUCER_VOCAB_SIZE = 4096


def named_config(name: str, vocab_size: int | None = None, seed: int = 0
                 ) -> registry.ModelConfig:
  """A model configuration by name (see `NAMED_CONFIGS`).

  conformer_s/m/l follow Gulati et al. 2020, Table 1 (encoder dim 144/256/512, 16/16/17
  blocks, 4/4/8 heads; one LSTM decoder layer of 320/640/640 units); the prediction network
  embeds the previous token in 320 dimensions and the joint network has the decoder's width.
  `paper_transducer` is the Federated Pruning paper's model: 17 blocks of dimension 512, an
  embedding prediction network (previous two tokens, 640 dims each) and a 2,048-dim joint.
  """
  if name not in NAMED_CONFIGS:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(NAMED_CONFIGS)}')
  return copy.deepcopy(NAMED_CONFIGS[name](vocab_size, seed))


def _tiny_transducer(vocab_size, seed):
  return transducer.transducer_config(
      _TINY_ENCODER, vocab_size or 29, embedding_dim=64, joint_dim=128, context_size=2,
      seed=seed)


def _micro_transducer(vocab_size, seed):
  return transducer.transducer_config(
      _MICRO_ENCODER, vocab_size or 29, embedding_dim=16, joint_dim=32, context_size=2,
      seed=seed)


def _published(encoder, decoder_units):
  def make(vocab_size, seed):
    return transducer.transducer_config(
        encoder, vocab_size or PUBLISHED_VOCAB_SIZE, embedding_dim=320, joint_dim=decoder_units,
        lstm_units=decoder_units, lstm_layers=1, seed=seed)
  return make


def _paper_transducer(vocab_size, seed):
  return transducer.transducer_config(
      _encoder(17, 512, 8), vocab_size or PAPER_TRANSDUCER_VOCAB_SIZE, embedding_dim=640,
      context_size=2, joint_dim=2048, seed=seed)


NAMED_CONFIGS = {
    'tiny': lambda vocab_size, seed: tiny_config(vocab_size or 29, seed),
    'tiny_transducer': _tiny_transducer,
    'micro': lambda vocab_size, seed: micro_config(vocab_size or 29, seed),
    'micro_transducer': _micro_transducer,
    'wide': lambda vocab_size, seed: wide_config(vocab_size or 29, seed),
    'deep': lambda vocab_size, seed: deep_config(vocab_size or 29, seed),
    'deep_narrow': lambda vocab_size, seed: deep_config(vocab_size or 29, seed, model_dim=48),
    'deep_preln': lambda vocab_size, seed: _pre_ln(deep_config(vocab_size or 29, seed)),
    'conformer_s': _published(_encoder(16, 144, 4), 320),
    'conformer_m': _published(_encoder(16, 256, 4), 640),
    'conformer_l': _published(_encoder(17, 512, 8), 640),
    'paper_transducer': _paper_transducer,
}


def ctc_loss(batch, logits, logit_lengths) -> tf.Tensor:
  """Per-example CTC negative log-likelihood."""
  return tf.nn.ctc_loss(labels=batch['labels'], logits=logits,
                        label_length=batch['label_length'], logit_length=logit_lengths,
                        logits_time_major=False, blank_index=0)


def greedy_ctc_decode(logits: tf.Tensor, logit_lengths: tf.Tensor) -> tf.RaggedTensor:
  """Best-path decoding: argmax per frame, merge repeats, drop blanks -> ragged token ids."""
  best = tf.argmax(logits, axis=-1, output_type=tf.int32)
  mask = tf.sequence_mask(logit_lengths, tf.shape(best)[1])
  previous = tf.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
  keep = mask & tf.not_equal(best, previous) & tf.not_equal(best, 0)
  return tf.ragged.boolean_mask(best, keep)


SPEECH_MODELS = ('conformer_ctc', 'conformer_transducer')


def per_example_loss(model: tf.keras.Model, batch, training: bool) -> tf.Tensor:
  """The model's own loss (CTC or transducer) for each utterance of a padded batch."""
  if model.name == 'conformer_transducer':
    return transducer.per_example_loss(model, batch, training)
  logits, logit_lengths = model([batch['features'], batch['feature_length']], training=training)
  return ctc_loss(batch, logits, logit_lengths)


def greedy_decode(model: tf.keras.Model, features: tf.Tensor, feature_length: tf.Tensor
                  ) -> tf.RaggedTensor:
  """Greedy token ids of a CTC or transducer model -> ragged [B, None]."""
  if model.name == 'conformer_transducer':
    return transducer.greedy_decode(model, features, feature_length)
  logits, lengths = model([features, feature_length], training=False)
  return greedy_ctc_decode(logits, lengths)


class AsrVariableModel(tff.learning.models.VariableModel):
  """A Keras CTC or transducer model as a `tff.learning.models.VariableModel`.

  Metric: mean per-utterance loss (CTC or transducer negative log-likelihood).
  """

  def __init__(self, keras_model: tf.keras.Model, input_spec):
    self._model = keras_model
    self._input_spec = input_spec
    self._loss_sum = tf.Variable(0.0, trainable=False, name='loss_sum')
    self._num_examples = tf.Variable(0, trainable=False, name='num_examples')
    self._num_batches = tf.Variable(0, trainable=False, name='num_batches')

  @property
  def trainable_variables(self):
    return self._model.trainable_variables

  @property
  def non_trainable_variables(self):
    return self._model.non_trainable_variables

  @property
  def local_variables(self):
    return [self._loss_sum, self._num_examples, self._num_batches]

  @property
  def input_spec(self):
    return self._input_spec

  @tf.function
  def predict_on_batch(self, batch_input, training=True):
    inputs = [batch_input['features'], batch_input['feature_length']]
    if self._model.name == 'conformer_transducer':
      inputs.append(batch_input['labels'])
    return self._model(inputs, training=training)[0]

  @tf.function
  def forward_pass(self, batch_input, training=True):
    per_example = per_example_loss(self._model, batch_input, training)
    num_examples = tf.shape(per_example)[0]
    self._loss_sum.assign_add(tf.reduce_sum(per_example))
    self._num_examples.assign_add(num_examples)
    self._num_batches.assign_add(1)
    return tff.learning.models.BatchOutput(
        loss=tf.reduce_mean(per_example), predictions=per_example, num_examples=num_examples)

  @tf.function
  def report_local_unfinalized_metrics(self):
    return collections.OrderedDict(
        loss=[self._loss_sum, tf.cast(self._num_examples, tf.float32)],
        num_examples=self._num_examples, num_batches=self._num_batches)

  def metric_finalizers(self):
    return collections.OrderedDict(
        loss=tf.function(lambda x: tf.math.divide_no_nan(x[0], x[1])),
        num_examples=tf.function(tf.identity), num_batches=tf.function(tf.identity))

  @tf.function
  def reset_metrics(self):
    for variable in self.local_variables:
      variable.assign(tf.zeros_like(variable))
