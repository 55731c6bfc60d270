import math
import re

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.models import asr
from fl_compression.models import conformer
from fl_compression.models import registry


class RelativePositionTest(absltest.TestCase):

  def test_relative_shift_picks_the_score_of_each_distance(self):
    length = 5
    # Input column c holds distance (length-1-c); fill entry (i, c) with 100*i + distance.
    distances = np.arange(length - 1, -length, -1)
    scores = np.array([[100 * i + d for d in distances] for i in range(length)], np.float32)
    shifted = conformer.relative_shift(tf.constant(scores[None, None])).numpy()[0, 0]
    expected = np.array([[100 * i + (i - j) for j in range(length)] for i in range(length)])
    np.testing.assert_array_equal(shifted, expected)

  def test_encodings_are_sinusoids_of_the_distance(self):
    encodings = conformer.relative_positions(tf.constant(3), 4).numpy()
    self.assertEqual(encodings.shape, (5, 4))
    for row, distance in enumerate(range(2, -3, -1)):
      expected = [math.sin(distance), math.cos(distance), math.sin(distance / 100),
                  math.cos(distance / 100)]
      np.testing.assert_allclose(encodings[row], expected, atol=1e-5)


class ConformerEncoderTest(absltest.TestCase):

  def test_padding_does_not_change_real_frames(self):
    for block_output_norm in (True, False):
      config = conformer.ConformerConfig(num_blocks=2, model_dim=32, num_heads=4,
                                         conv_kernel_size=5, num_groups=4, dropout=0.0,
                                         block_output_norm=block_output_norm)
      encoder = conformer.ConformerEncoder(config)
      features = tf.random.stateless_normal([1, 120, 80], seed=[1, 2])
      alone, alone_length = encoder(features, tf.constant([120]), training=False)
      padded = tf.concat([features, 5.0 * tf.ones([1, 80, 80])], axis=1)
      batched, batched_length = encoder(padded, tf.constant([120]), training=False)
      self.assertEqual(int(alone_length[0]), int(batched_length[0]))
      frames = int(alone_length[0])
      np.testing.assert_allclose(batched[0, :frames], alone[0, :frames], atol=1e-4)
      np.testing.assert_array_equal(batched[0, frames:].numpy(), 0.0)

  def test_a_config_saved_before_an_encoder_field_is_the_same_model(self):
    tiny = asr.named_config('tiny')
    saved = dict(tiny, encoder={k: v for k, v in tiny['encoder'].items()
                                if k != 'block_output_norm'})
    self.assertNotEqual(saved, tiny)
    self.assertEqual(asr.canonical_config(saved), asr.canonical_config(tiny))
    self.assertNotEqual(asr.canonical_config(saved),
                        asr.canonical_config(asr.named_config('micro')))
    self.assertEqual(asr.canonical_config(dict(tiny, seed=5), ('seed',)),
                     asr.canonical_config(tiny, ('seed',)))

  def test_pre_ln_stack_has_one_output_norm_instead_of_one_per_block(self):
    post = registry.build_keras_model(asr.named_config('deep'))
    pre = registry.build_keras_model(asr.named_config('deep_preln'))
    post_names = {v.name for v in post.variables}
    pre_names = {v.name for v in pre.variables}
    self.assertEqual(post_names - pre_names,
                     {f'encoder/block_{b:02d}/final_norm/{p}:0' for b in range(16)
                      for p in ('gamma', 'beta')})
    self.assertEqual(pre_names - post_names,
                     {'encoder/output_norm/gamma:0', 'encoder/output_norm/beta:0'})
    # The encoder's output is normalized per frame either way.
    features = tf.random.stateless_normal([1, 100, 80], seed=[3, 4])
    for model in (post, pre):
      encoder = model.get_layer('encoder')
      encodings, _ = encoder(features, tf.constant([100]), training=False)
      np.testing.assert_allclose(tf.math.reduce_std(encodings, axis=-1), 1.0, atol=0.01)

  def test_subsampled_length_matches_the_convolutions(self):
    encoder = conformer.ConformerEncoder(conformer.ConformerConfig(num_blocks=1, model_dim=16,
                                                                   num_heads=2, num_groups=2))
    for frames in (7, 8, 50, 101):
      output, lengths = encoder(tf.zeros([1, frames, 80]), tf.constant([frames]))
      self.assertEqual(output.shape[1], int(lengths[0]))

  def test_masked_group_norm_matches_group_norm_without_padding(self):
    x = tf.random.stateless_normal([2, 30, 16], seed=[3, 4])
    ours = conformer.MaskedGroupNorm(4)(x, tf.ones([2, 30, 1]))
    reference = tf.keras.layers.GroupNormalization(4, epsilon=1e-5)(x)
    np.testing.assert_allclose(ours, reference, atol=1e-4)

  def test_block_parameter_counts_match_the_published_sizes(self):
    # Gulati et al. 2020: conformer blocks of S/M/L hold about 0.5M / 1.6M / 6.3M parameters.
    for dim, heads, expected in ((144, 4, 0.5e6), (256, 4, 1.6e6), (512, 8, 6.3e6)):
      block = conformer.ConformerBlock(conformer.ConformerConfig(
          num_blocks=1, model_dim=dim, num_heads=heads, conv_kernel_size=32))
      block(tf.zeros([1, 4, dim]), tf.ones([1, 4], tf.bool))
      count = sum(int(np.prod(v.shape)) for v in block.trainable_variables)
      self.assertLess(abs(count - expected) / expected, 0.03, (dim, count))


def _small_ctc(dropout: float) -> tf.keras.Model:
  config = asr.tiny_config(vocab_size=8)
  config['encoder'].update(num_blocks=2, model_dim=32, dropout=dropout)
  return registry.build_keras_model(config)


_BATCH = dict(features=tf.random.stateless_normal([2, 60, 80], seed=[5, 6]),
              feature_length=tf.constant([60, 48]),
              labels=tf.constant([[1, 2, 3], [4, 5, 0]]), label_length=tf.constant([3, 2]))


def _loss_and_gradients(model: tf.keras.Model):
  """One training-mode loss and its gradients, in a freshly traced `tf.function` (the encoder's
  training configuration is read when the step is traced)."""

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits, lengths = model([_BATCH['features'], _BATCH['feature_length']], training=True)
      loss = tf.reduce_mean(tf.nn.ctc_loss(
          _BATCH['labels'], logits, _BATCH['label_length'], lengths, logits_time_major=False,
          blank_index=0))
    return loss, tape.gradient(loss, model.trainable_variables)

  loss, grads = step()
  return float(loss), [g.numpy() for g in grads]


class TestModelsTest(absltest.TestCase):

  def test_micro_models_have_every_variable_kind_of_the_tiny_ones_in_two_blocks(self):
    # Tests run the federated programs on `micro`: it must exercise every layer `tiny` has.
    def kinds(name):
      model = registry.build_keras_model(asr.named_config(name))
      names = [v.name for v in model.trainable_variables + model.non_trainable_variables]
      return ({re.sub(r'block_\d+', 'block', n) for n in names},
              {m.group(0) for n in names for m in [re.search(r'block_\d+', n)] if m})
    for small, large in (('micro', 'tiny'), ('micro_transducer', 'tiny_transducer')):
      small_kinds, small_blocks = kinds(small)
      large_kinds, _ = kinds(large)
      self.assertEqual(small_kinds, large_kinds, small)
      self.assertEqual(small_blocks, {'block_00', 'block_01'}, small)


class RematerializationTest(absltest.TestCase):

  def test_rematerialized_gradients_equal_the_plain_ones_under_the_same_dropout(self):
    model = _small_ctc(dropout=0.3)
    self.assertEqual(conformer.set_rematerialization(model, False, dropout_seed=(3, 4)), 1)
    plain_loss, plain = _loss_and_gradients(model)
    conformer.set_rematerialization(model, True, dropout_seed=(3, 4))
    remat_loss, remat = _loss_and_gradients(model)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-5)
    self.assertLen(remat, len(plain))
    for variable, a, b in zip(model.trainable_variables, remat, plain):
      # Equal up to float32 rounding (the key bias's gradient is zero up to rounding, as
      # softmax ignores a shift of all scores).
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(1e-5 * np.abs(b).max(), 1e-6),
                                 err_msg=variable.name)
    # Another seed draws other masks: the comparison above is not blind to dropout.
    conformer.set_rematerialization(model, True, dropout_seed=(7, 8))
    other_loss, _ = _loss_and_gradients(model)
    self.assertFalse(np.isclose(other_loss, plain_loss, rtol=1e-5))

  def test_rematerializing_steps_draw_new_dropout_masks_each_step(self):
    model = _small_ctc(dropout=0.3)
    conformer.set_rematerialization(model, True)
    inputs = [_BATCH['features'], _BATCH['feature_length']]
    call = tf.function(lambda: model(inputs, training=True)[0])
    first, second = call().numpy(), call().numpy()
    self.assertFalse(np.allclose(first, second))
    # Inference never drops out and does not rematerialize.
    np.testing.assert_array_equal(model(inputs, training=False)[0],
                                  model(inputs, training=False)[0])

  def test_stateless_dropout_keeps_the_rate_and_the_expectation(self):
    layer = conformer.SeededDropout(0.25)
    ones = tf.ones([200, 200])
    dropped = layer(ones, training=True, seed=tf.constant([1, 2])).numpy()
    self.assertAlmostEqual(np.mean(dropped == 0), 0.25, delta=0.01)
    np.testing.assert_allclose(np.unique(dropped), [0.0, 1 / 0.75], rtol=1e-6)
    np.testing.assert_array_equal(dropped, layer(ones, training=True, seed=tf.constant([1, 2])))
    np.testing.assert_array_equal(layer(ones, training=False, seed=tf.constant([1, 2])), ones)

  def test_models_without_a_conformer_have_nothing_to_rematerialize(self):
    model = registry.build_keras_model({'name': 'mlp', 'input_dim': 4, 'hidden_units': [3],
                                        'num_classes': 2})
    self.assertEqual(conformer.set_rematerialization(model, True), 0)


class CtcModelTest(absltest.TestCase):

  def test_greedy_decoding_merges_repeats_and_drops_blanks(self):
    ids = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [4, 0, 4, 4, 5, 5, 5, 5, 5]]
    logits = tf.one_hot(ids, 6) * 10.0
    decoded = asr.greedy_ctc_decode(logits, tf.constant([9, 4])).to_list()
    self.assertEqual(decoded, [[1, 1, 2, 3], [4, 4]])

  def test_ctc_training_step_lowers_the_loss(self):
    config = asr.tiny_config(vocab_size=8)
    config['encoder'].update(num_blocks=1, model_dim=32, dropout=0.0)
    model = registry.build_keras_model(config)
    batch = dict(features=tf.random.stateless_normal([2, 60, 80], seed=[5, 6]),
                 feature_length=tf.constant([60, 48]),
                 labels=tf.constant([[1, 2, 3], [4, 5, 0]]), label_length=tf.constant([3, 2]))
    spec = {k: tf.TensorSpec([None] + list(v.shape[1:]), v.dtype) for k, v in batch.items()}
    variable_model = asr.AsrVariableModel(model, spec)
    optimizer = tf.keras.optimizers.Adam(1e-2)
    losses = []
    for _ in range(15):
      with tf.GradientTape() as tape:
        loss = variable_model.forward_pass(batch).loss
      grads = tape.gradient(loss, variable_model.trainable_variables)
      optimizer.apply_gradients(zip(grads, variable_model.trainable_variables))
      losses.append(float(loss))
    self.assertLess(losses[-1], 0.5 * losses[0])
    metrics = variable_model.report_local_unfinalized_metrics()
    self.assertEqual(int(metrics['num_examples']), 30)


if __name__ == '__main__':
  absltest.main()
