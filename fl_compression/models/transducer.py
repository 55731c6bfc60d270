"""Conformer transducer (RNN-T): Conformer encoder, prediction network and joint network.

The prediction network embeds the previous `context_size` tokens (blank starts a sequence);
with `lstm_units > 0` LSTM layers follow (the published Conformer S/M/L decoders), without them
it is the stateless *embedding* prediction network of the Federated Pruning paper's model.
The joint network adds projections of one encoder frame and one prediction output, applies
tanh and a dense layer to the vocabulary. Blank is token 0.

The training model maps (features, feature_length, labels) to joint logits [B, T', U+1, V] and
logit lengths; `greedy_decode` runs frame-synchronous greedy search with at most
`max_symbols_per_frame` emissions per encoder frame.
"""

from typing import Any

import tensorflow as tf

from fl_compression.models import conformer
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.models import rnnt_loss as rnnt_loss_lib
from fl_compression.models import tokens

BLANK = 0


class PredictionNetwork(tf.keras.layers.Layer):
  """Previous tokens -> prediction vectors; `call` for whole label sequences, `step` for one."""

  def __init__(self, vocab_size: int, embedding_dim: int, context_size: int = 1,
               lstm_units: int = 0, lstm_layers: int = 0, **kwargs):
    super().__init__(**kwargs)
    if context_size < 1:
      raise ValueError(f'prediction context_size must be >= 1, got {context_size}')
    if (lstm_units > 0) != (lstm_layers > 0):
      raise ValueError('prediction lstm_units and lstm_layers must both be 0 or both positive, '
                       f'got {lstm_units} and {lstm_layers}')
    self.vocab_size, self.context_size = vocab_size, context_size
    self.embedding = tf.keras.layers.Embedding(vocab_size, embedding_dim, name='embedding')
    self.lstms = [tf.keras.layers.LSTM(lstm_units, return_sequences=True, return_state=True,
                                       name=f'lstm_{i}') for i in range(lstm_layers)]
    self.output_dim = lstm_units if lstm_layers else embedding_dim * context_size

  def _embed_contexts(self, contexts):
    """contexts [B, U, C] token ids -> [B, U, C * E]."""
    embedded = self.embedding(contexts)
    shape = tf.shape(embedded)
    return tf.reshape(embedded, [shape[0], shape[1], embedded.shape[2] * embedded.shape[3]])

  def call(self, labels):
    """labels [B, U] -> prediction vectors [B, U+1, P] (position u has seen labels[:u])."""
    padded = tf.pad(labels, [[0, 0], [self.context_size, 0]], constant_values=BLANK)
    length = tf.shape(labels)[1] + 1
    # Context of position u: tokens u-C+1..u of [blank]*C + labels, i.e. padded[u+1..u+C].
    contexts = tf.stack([padded[:, i:i + length] for i in range(self.context_size)], axis=-1)
    x = self._embed_contexts(contexts)
    for lstm in self.lstms:
      x = lstm(x)[0]
    return x

  def initial_state(self, batch_size):
    """Decoding state: the last C tokens (all blank) and the LSTM states."""
    context = tf.fill([batch_size, self.context_size], tf.constant(BLANK, tf.int32))
    lstm_states = [[tf.zeros([batch_size, lstm.units]), tf.zeros([batch_size, lstm.units])]
                   for lstm in self.lstms]
    return context, lstm_states

  def step(self, state):
    """One prediction vector [B, P] for `state`, and the LSTM states after it."""
    context, lstm_states = state
    x = tf.squeeze(self._embed_contexts(tf.expand_dims(context, 1)), 1)
    new_states = []
    for lstm, (h, c) in zip(self.lstms, lstm_states):
      # The cell itself for one step: the layer would run a loop over a length-1 sequence
      # (tensor lists, which TFLite has no builtins for).
      x, (h, c) = lstm.cell(x, [h, c])
      new_states.append([h, c])
    return x, new_states


class JointNetwork(tf.keras.layers.Layer):
  """tanh(W_enc e_t + W_pred p_u + b) -> vocabulary logits."""

  def __init__(self, joint_dim: int, vocab_size: int, **kwargs):
    super().__init__(**kwargs)
    self.encoder_projection = pruned_dense.plain_dense(joint_dim, 'encoder_projection')
    self.prediction_projection = pruned_dense.plain_dense(
        joint_dim, 'prediction_projection', use_bias=False)
    self.output_dense = pruned_dense.plain_dense(vocab_size, 'output')

  def call(self, encodings, predictions):
    """encodings [B, T, D] and predictions [B, U+1, P] -> logits [B, T, U+1, V]."""
    # expand_dims rather than `[:, :, None, :]`, whose strided slice is no TFLite builtin.
    hidden = (tf.expand_dims(self.encoder_projection(encodings), 2)
              + tf.expand_dims(self.prediction_projection(predictions), 1))
    return self.output_dense(tf.tanh(hidden))

  def step(self, encoding, prediction):
    """One frame [B, D] and one prediction [B, P] -> logits [B, V]."""
    return self.output_dense(tf.tanh(self.encoder_projection(encoding)
                                     + self.prediction_projection(prediction)))


@registry.register('conformer_transducer')
def build_conformer_transducer(config: registry.ModelConfig) -> tf.keras.Model:
  """config: {'name': 'conformer_transducer', 'encoder': {...}, 'prediction': {embedding_dim,
  context_size, lstm_units, lstm_layers}, 'joint_dim': J, 'vocab_size': V}."""
  tf.keras.utils.set_random_seed(int(config.get('seed', 0)))
  encoder_cfg = conformer.ConformerConfig(**config['encoder'])
  vocab_size = int(config['vocab_size'])
  features = tf.keras.Input(shape=(None, encoder_cfg.num_mel_bins), name='features')
  lengths = tf.keras.Input(shape=(), dtype=tf.int32, name='feature_length')
  labels = tf.keras.Input(shape=(None,), dtype=tf.int32, name='labels')
  encodings, out_lengths = conformer.ConformerEncoder(
      encoder_cfg, pruning=conformer.encoder_plan(config), name='encoder')(
      features, lengths)
  predictions = PredictionNetwork(vocab_size, name='prediction', **config['prediction'])(labels)
  logits = JointNetwork(int(config['joint_dim']), vocab_size, name='joint')(
      encodings, predictions)
  return tf.keras.Model([features, lengths, labels], [logits, out_lengths],
                        name='conformer_transducer')


def per_example_loss(model: tf.keras.Model, batch, training: bool) -> tf.Tensor:
  """Transducer negative log-likelihood of each utterance of a padded batch."""
  logits, logit_lengths = model(
      [batch['features'], batch['feature_length'], batch['labels']], training=training)
  return rnnt_loss_lib.rnnt_loss_from_logits(
      logits, batch['labels'], logit_lengths, batch['label_length'], blank=BLANK)


def greedy_tokens(model: tf.keras.Model, features: tf.Tensor, feature_length: tf.Tensor,
                  max_symbols_per_frame: int = 3) -> tuple[tf.Tensor, tf.Tensor]:
  """Frame-synchronous greedy search -> left-aligned token ids [B, frames * S] padded with
  blank, and their counts [B]. The loop carries dense tensors (no tensor arrays), so it
  converts to TFLite builtin ops."""
  encoder, prediction, joint = (model.get_layer(n) for n in ('encoder', 'prediction', 'joint'))
  encodings, lengths = encoder(features, feature_length, training=False)
  batch, frames = tf.shape(encodings)[0], tf.shape(encodings)[1]
  slots = frames * max_symbols_per_frame
  context, lstm_states = prediction.initial_state(batch)
  pred_out, lstm_states = prediction.step((context, lstm_states))
  positions = tf.expand_dims(tf.range(slots), 0)

  def frame(t, context, lstm_states, pred_out, emitted):
    encoding = tf.gather(encodings, t, axis=1)
    active = t < lengths
    for s in range(max_symbols_per_frame):
      token = tf.argmax(joint.step(encoding, pred_out), axis=-1, output_type=tf.int32)
      emit = active & tf.not_equal(token, BLANK)
      here = tf.cast(tf.equal(positions, t * max_symbols_per_frame + s), tf.int32)
      emitted += here * tf.expand_dims(tf.where(emit, token, -1), 1)
      new_context = tf.concat([context[:, 1:], tf.expand_dims(token, 1)], axis=1)
      new_out, new_states = prediction.step((new_context, lstm_states))
      keep = lambda new, old: tf.where(tf.expand_dims(emit, 1), new, old)  # noqa: E731
      context = keep(new_context, context)
      pred_out = keep(new_out, pred_out)
      lstm_states = tf.nest.map_structure(keep, new_states, lstm_states)
      active = emit
    return t + 1, context, lstm_states, pred_out, emitted

  _, _, _, _, emitted = tf.while_loop(
      lambda t, *_: t < frames, frame,
      (tf.constant(0), context, lstm_states, pred_out, tf.zeros([batch, slots], tf.int32)))
  return tokens.left_aligned(emitted, emitted > 0)


def greedy_decode(model: tf.keras.Model, features: tf.Tensor, feature_length: tf.Tensor,
                  max_symbols_per_frame: int = 3) -> tf.RaggedTensor:
  """Frame-synchronous greedy search -> ragged token ids [B, None]."""
  token_ids, counts = greedy_tokens(model, features, feature_length, max_symbols_per_frame)
  return tf.RaggedTensor.from_tensor(token_ids, lengths=counts)


def transducer_config(encoder: dict[str, Any], vocab_size: int, *, embedding_dim: int,
                      joint_dim: int, context_size: int = 1, lstm_units: int = 0,
                      lstm_layers: int = 0, seed: int = 0) -> registry.ModelConfig:
  return {'name': 'conformer_transducer', 'encoder': encoder, 'vocab_size': vocab_size,
          'prediction': {'embedding_dim': embedding_dim, 'context_size': context_size,
                         'lstm_units': lstm_units, 'lstm_layers': lstm_layers},
          'joint_dim': joint_dim, 'seed': seed}
