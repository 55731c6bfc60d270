from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.models import transducer


def _small_transducer(lstm: bool):
  config = asr.named_config('tiny_transducer', vocab_size=7, seed=3)
  config['encoder'].update(num_blocks=1, model_dim=32, dropout=0.0)
  if lstm:
    config['prediction'].update(context_size=1, lstm_units=24, lstm_layers=2)
  return registry.build_keras_model(config)


def _batch():
  return dict(features=tf.random.stateless_normal([3, 64, 80], seed=[1, 2]),
              feature_length=tf.constant([64, 40, 52]),
              labels=tf.constant([[1, 2, 3, 4], [5, 6, 0, 0], [2, 0, 0, 0]]),
              label_length=tf.constant([4, 2, 1]))


def _reference_greedy(model, features, length, max_symbols):
  """One utterance, step by step in Python: the loop `greedy_decode` batches."""
  encoder, prediction, joint = (model.get_layer(n) for n in ('encoder', 'prediction', 'joint'))
  encodings, lengths = encoder(features[None], tf.constant([length]), training=False)
  context, states = prediction.initial_state(1)
  out, states = prediction.step((context, states))
  tokens = []
  for t in range(int(lengths[0])):
    for _ in range(max_symbols):
      token = int(np.argmax(joint.step(encodings[:, t], out).numpy()[0]))
      if token == transducer.BLANK:
        break
      tokens.append(token)
      context = tf.concat([context[:, 1:], tf.constant([[token]])], axis=1)
      out, states = prediction.step((context, states))
  return tokens


class TransducerModelTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_prediction_call_matches_step_by_step(self, lstm):
    prediction = _small_transducer(lstm).get_layer('prediction')
    labels = tf.constant([[3, 1, 4, 1, 5]])
    whole = prediction(labels).numpy()[0]
    context, states = prediction.initial_state(1)
    for u in range(labels.shape[1] + 1):
      out, states = prediction.step((context, states))
      np.testing.assert_allclose(out.numpy()[0], whole[u], atol=1e-5)
      if u < labels.shape[1]:
        context = tf.concat([context[:, 1:], labels[:, u:u + 1]], axis=1)

  def test_logits_cover_every_frame_and_label_position(self):
    model = _small_transducer(lstm=False)
    batch = _batch()
    logits, lengths = model([batch['features'], batch['feature_length'], batch['labels']])
    self.assertEqual(logits.shape, (3, 15, 5, 7))
    self.assertEqual(lengths.numpy().tolist(), [15, 9, 12])

  @parameterized.parameters(False, True)
  def test_batched_greedy_decoding_equals_per_utterance_decoding(self, lstm):
    model = _small_transducer(lstm)
    # Scale the output layer so that the untrained model emits many non-blank symbols.
    output = model.get_layer('joint').output_dense
    output.kernel.assign(output.kernel * 8.0)
    output.bias.assign(tf.constant([-2.0] + [0.0] * 6))
    batch = _batch()
    decoded = transducer.greedy_decode(model, batch['features'], batch['feature_length'],
                                       max_symbols_per_frame=3).to_list()
    self.assertGreater(sum(map(len, decoded)), 10)
    for i in range(3):
      length = int(batch['feature_length'][i])
      expected = _reference_greedy(model, batch['features'][i, :length], length, 3)
      self.assertEqual(decoded[i], expected)

  def test_transducer_training_lowers_the_loss(self):
    model = _small_transducer(lstm=False)
    batch = _batch()
    spec = {k: tf.TensorSpec([None] + list(v.shape[1:]), v.dtype) for k, v in batch.items()}
    variable_model = asr.AsrVariableModel(model, spec)
    optimizer = tf.keras.optimizers.Adam(1e-2)
    losses = []
    for _ in range(15):
      with tf.GradientTape() as tape:
        loss = variable_model.forward_pass(batch).loss
      grads = tape.gradient(loss, variable_model.trainable_variables)
      self.assertTrue(all(g is not None for g in grads))
      optimizer.apply_gradients(zip(grads, variable_model.trainable_variables))
      losses.append(float(loss))
    self.assertLess(losses[-1], 0.5 * losses[0])

  def test_bad_prediction_settings_are_named(self):
    with self.assertRaisesRegex(ValueError, 'lstm_units and lstm_layers'):
      transducer.PredictionNetwork(7, 8, lstm_units=8, lstm_layers=0)
    with self.assertRaisesRegex(ValueError, 'context_size'):
      transducer.PredictionNetwork(7, 8, context_size=0)
    with self.assertRaisesRegex(ValueError, 'unknown model'):
      asr.named_config('conformer_xl')


def _count(variables):
  return sum(v.shape.num_elements() for v in variables)


class PublishedSizesTest(parameterized.TestCase):
  """Build, count, discard: the large configurations against the published parameter table."""

  # Gulati et al. 2020, Table 1 (with Zhou et al. 2022): total and per-block parameters.
  @parameterized.parameters(('conformer_s', 10.3e6, 16, 0.5e6), ('conformer_m', 30.7e6, 16, 1.6e6),
                            ('conformer_l', 118.6e6, 17, 6.3e6))
  def test_published_parameter_counts(self, name, total, blocks, per_block):
    model = registry.build_keras_model(asr.named_config(name))
    try:
      block_counts = [_count(v for v in model.trainable_variables
                             if f'/block_{i:02d}/' in v.name) for i in range(blocks)]
      self.assertEqual(_count(v for v in model.trainable_variables if '/block_' in v.name),
                       sum(block_counts))  # Exactly `blocks` blocks.
      self.assertEqual(len(set(block_counts)), 1)
      self.assertAlmostEqual(block_counts[0] / per_block, 1.0, delta=0.03)
      self.assertAlmostEqual(model.count_params() / total, 1.0, delta=0.03)
    finally:
      del model
      tf.keras.backend.clear_session()

  def test_paper_transducer_shape(self):
    config = asr.named_config('paper_transducer')
    model = registry.build_keras_model(config)
    try:
      self.assertEqual(config['encoder']['num_blocks'], 17)
      self.assertEqual(model.get_layer('encoder').blocks[0].config.model_dim, 512)
      prediction, joint = model.get_layer('prediction'), model.get_layer('joint')
      self.assertEqual(prediction.embedding.output_dim, 640)
      self.assertEqual(prediction.lstms, [])  # Embedding prediction network.
      self.assertEqual(joint.encoder_projection.units, 2048)
      # About 130M parameters, as the paper describes its model.
      self.assertAlmostEqual(model.count_params() / 130e6, 1.0, delta=0.03)
    finally:
      del model
      tf.keras.backend.clear_session()


if __name__ == '__main__':
  absltest.main()
