"""Conformer-CTC speech recognizer: the Keras model and its `tff.learning` VariableModel.

The Keras model maps (features [B, T, 80], feature_length [B]) to (logits [B, T/4, vocab],
logit_length [B]); the VariableModel trains it with CTC loss (blank = token 0) on padded
batches `{features, labels, feature_length, label_length}`.
"""

import collections
import dataclasses

import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.models import conformer
from fl_compression.models import registry


def encoder_config(config: registry.ModelConfig) -> conformer.ConformerConfig:
  return conformer.ConformerConfig(**config['encoder'])


@registry.register('conformer_ctc')
def build_conformer_ctc(config: registry.ModelConfig) -> tf.keras.Model:
  """config: {'name': 'conformer_ctc', 'encoder': {ConformerConfig fields}, 'vocab_size': V}."""
  tf.keras.utils.set_random_seed(int(config.get('seed', 0)))
  encoder_cfg = encoder_config(config)
  features = tf.keras.Input(shape=(None, encoder_cfg.num_mel_bins), name='features')
  lengths = tf.keras.Input(shape=(), dtype=tf.int32, name='feature_length')
  encodings, out_lengths = conformer.ConformerEncoder(encoder_cfg, name='encoder')(
      features, lengths)
  logits = tf.keras.layers.Dense(config['vocab_size'], name='ctc_head')(encodings)
  return tf.keras.Model([features, lengths], [logits, out_lengths], name='conformer_ctc')


def tiny_config(vocab_size: int, seed: int = 0) -> registry.ModelConfig:
  """The CPU-demo and test size: 4 blocks of dimension 96."""
  encoder = dataclasses.asdict(conformer.ConformerConfig(
      num_blocks=4, model_dim=96, num_heads=4, conv_kernel_size=15, num_groups=8))
  return {'name': 'conformer_ctc', 'encoder': encoder, 'vocab_size': vocab_size, 'seed': seed}


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


class CtcVariableModel(tff.learning.models.VariableModel):
  """A Keras CTC model as a `tff.learning.models.VariableModel` (metric: mean CTC loss)."""

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
    logits, _ = self._model([batch_input['features'], batch_input['feature_length']],
                            training=training)
    return logits

  @tf.function
  def forward_pass(self, batch_input, training=True):
    logits, logit_lengths = self._model(
        [batch_input['features'], batch_input['feature_length']], training=training)
    per_example = ctc_loss(batch_input, logits, logit_lengths)
    num_examples = tf.shape(per_example)[0]
    self._loss_sum.assign_add(tf.reduce_sum(per_example))
    self._num_examples.assign_add(num_examples)
    self._num_batches.assign_add(1)
    return tff.learning.models.BatchOutput(
        loss=tf.reduce_mean(per_example), predictions=logits, num_examples=num_examples)

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
