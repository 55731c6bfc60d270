"""The on-device model's pieces in TensorFlow: trainable subsets, the optimizer, CTC tokens."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.models import asr
from fl_compression.models import conformer
from fl_compression.models import registry
from tflite_export import signatures


def _small_model(num_blocks=2):
  config = asr.tiny_config(vocab_size=29)
  config['encoder'].update(num_blocks=num_blocks, model_dim=32, dropout=0.0)
  return registry.build_keras_model(config)


class TrainableSelectionTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = _small_model(num_blocks=3)
    cls.names = [signatures.variable_name(v) for v in cls.model.trainable_variables]

  def _selected(self, spec):
    return [signatures.variable_name(v) for v in signatures.select_trainable(self.model, spec)]

  def test_all_is_every_trainable_variable(self):
    self.assertEqual(self._selected('all'), self.names)

  def test_last_blocks_is_those_blocks_and_the_head(self):
    chosen = self._selected('last_blocks:1')
    expected = [n for n in self.names if n.startswith(('encoder/block_02/', 'ctc_head/'))]
    self.assertEqual(chosen, expected)
    self.assertIn('ctc_head/kernel', chosen)
    self.assertFalse(any(n.startswith('encoder/block_01/') for n in chosen))
    self.assertLess(len(self._selected('last_blocks:1')), len(self._selected('last_blocks:2')))

  def test_blocks_are_those_encoder_blocks_only(self):
    chosen = self._selected('blocks:2,0')
    self.assertEqual(chosen, [n for n in self.names
                              if n.startswith(('encoder/block_00/', 'encoder/block_02/'))])
    with self.assertRaisesRegex(signatures.ExportError, 'no trainable encoder block_05'):
      signatures.select_trainable(self.model, 'blocks:5')

  def test_regular_expression_searches_the_names(self):
    self.assertEqual(self._selected(r'ffn\d/dense_(in|out)/kernel'),
                     [n for n in self.names if '/ffn' in n and n.endswith('/kernel')])

  def test_bad_specs_name_the_flag(self):
    for spec, message in (('last_blocks:4', 'has 3 encoder blocks'),
                          ('last_blocks:x', 'has 3 encoder blocks'),
                          ('nothing_like_this', 'matches no variable'),
                          ('(', 'not all, last_blocks:N or a valid regular expression')):
      with self.assertRaisesRegex(signatures.ExportError, message):
        signatures.select_trainable(self.model, spec)
      with self.assertRaisesRegex(signatures.ExportError, '--trainable='):
        signatures.select_trainable(self.model, spec)

  def test_bad_training_options(self):
    with self.assertRaisesRegex(signatures.ExportError, '--optimizer=rmsprop is unknown'):
      signatures.TrainingOptions(optimizer='rmsprop')
    with self.assertRaisesRegex(signatures.ExportError, '--learning_rate must be positive'):
      signatures.TrainingOptions(learning_rate=0.0)


class OptimizerTest(absltest.TestCase):

  def _run(self, optimizer_name, steps=4):
    initial = [np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.ones(5, np.float32)]
    ours = [tf.Variable(v) for v in initial]
    keras = [tf.Variable(v) for v in initial]
    options = signatures.TrainingOptions(optimizer=optimizer_name, learning_rate=0.05)
    optimizer = signatures.OnDeviceOptimizer(options, ours)
    reference = (tf.keras.optimizers.Adam(0.05, epsilon=options.epsilon)
                 if optimizer_name == 'adam' else tf.keras.optimizers.SGD(0.05))
    for step in range(steps):
      grads = [tf.sin(v * (step + 1)) for v in ours]
      optimizer.apply(grads)
      reference.apply_gradients(zip([tf.sin(v * (step + 1)) for v in keras], keras))
      for a, b in zip(ours, keras):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    return optimizer, ours, initial

  def test_adam_matches_keras_adam(self):
    optimizer, ours, initial = self._run('adam')
    self.assertEqual(float(optimizer.step), 4.0)
    self.assertFalse(np.allclose(ours[0].numpy(), initial[0]))
    # Step, then m and v of each variable: what a checkpoint holds besides the weights.
    self.assertLen(optimizer.slots, 1 + 2 * len(ours))

  def test_sgd_matches_keras_sgd_and_has_no_state(self):
    optimizer, _, _ = self._run('sgd')
    self.assertEmpty(optimizer.slots)


class CtcTokensTest(absltest.TestCase):

  def test_left_aligned_tokens_equal_greedy_decoding(self):
    logits = tf.random.stateless_normal([5, 40, 6], seed=[3, 4]) * 3.0
    lengths = tf.constant([40, 33, 1, 17, 28])
    tokens, counts = signatures.left_aligned_ctc_tokens(logits, lengths)
    expected = asr.greedy_ctc_decode(logits, lengths).to_list()
    self.assertEqual([row[:n].tolist() for row, n in zip(tokens.numpy(), counts.numpy())],
                     expected)
    self.assertTrue(any(len(e) > 3 for e in expected))
    for row, n in zip(tokens.numpy(), counts.numpy()):
      np.testing.assert_array_equal(row[n:], 0)  # Padded with blank.


class LayerFormulationTest(absltest.TestCase):
  """The formulations chosen for TFLite compute what the Keras layers compute."""

  def test_layer_norm_equals_keras_layer_normalization(self):
    x = tf.random.stateless_normal([2, 7, 24], seed=[5, 6]) * 3.0 + 1.0
    ours = conformer.LayerNorm()
    keras = tf.keras.layers.LayerNormalization()
    ours.build(x.shape)
    keras.build(x.shape)
    gamma = tf.random.stateless_normal([24], seed=[7, 8])
    beta = tf.random.stateless_normal([24], seed=[9, 10])
    for layer in (ours, keras):
      layer.gamma.assign(gamma)
      layer.beta.assign(beta)
    np.testing.assert_allclose(ours(x).numpy(), keras(x).numpy(), atol=1e-5)
    self.assertEqual([v.name.split('/')[-1] for v in ours.weights],
                     [v.name.split('/')[-1] for v in keras.weights])


if __name__ == '__main__':
  absltest.main()
