from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.data import features


class LogMelTest(absltest.TestCase):

  def test_matches_a_numpy_stft_reference(self):
    config = features.FeatureConfig()
    rng = np.random.default_rng(0)
    samples = rng.normal(scale=0.1, size=4000).astype(np.float32)
    ours = features.log_mel(tf.constant(samples), config).numpy()
    # Independent STFT: periodic Hann window, frames of 400 every 160, 512-point real FFT.
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([samples[i:i + 400] * window for i in range(0, 4000 - 400 + 1, 160)])
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2
    mel = tf.signal.linear_to_mel_weight_matrix(80, 257, 16000, 20.0, 7600.0).numpy()
    reference = np.log(power @ mel + 1e-6)
    self.assertEqual(ours.shape, (1 + (4000 - 400) // 160, 80))
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)

  def test_tone_energy_lands_in_the_matching_mel_bin(self):
    t = np.arange(16000) / 16000
    low = features.log_mel(tf.constant(np.sin(2 * np.pi * 300 * t), tf.float32)).numpy()
    high = features.log_mel(tf.constant(np.sin(2 * np.pi * 3000 * t), tf.float32)).numpy()
    self.assertLess(np.argmax(low.mean(0)), np.argmax(high.mean(0)))
    self.assertGreater(np.argmax(high.mean(0)), 40)

  def test_spec_augment_masks_but_keeps_shape(self):
    feats = tf.ones([300, 80])
    masked = features.spec_augment(feats, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(features.spec_augment(feats, tf.constant([1, 2])), masked)
    self.assertFalse(np.array_equal(features.spec_augment(feats, tf.constant([1, 3])), masked))
    self.assertEqual(masked.shape, (300, 80))
    zero_fraction = float(np.mean(masked == 0))
    self.assertGreater(zero_fraction, 0.0)
    self.assertLess(zero_fraction, 0.6)
    # Masks are whole bands: a bin is zeroed in every frame or a frame in every bin.
    zero = masked == 0
    zero_bins, zero_frames = zero.all(axis=0), zero.all(axis=1)
    np.testing.assert_array_equal(zero, zero_bins[None, :] | zero_frames[:, None])
    self.assertLessEqual(zero_bins.sum(), 2 * 15)
    self.assertLessEqual(zero_frames.sum(), 2 * 25)

  def test_normalize_gives_zero_mean_unit_variance(self):
    feats = tf.constant(np.random.default_rng(1).normal(3.0, 2.0, size=(200, 80)), tf.float32)
    normalized = features.normalize(feats).numpy()
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalized.std(0), 1.0, atol=1e-3)


class CharTokenizerTest(absltest.TestCase):

  def test_round_trip_and_unknown_characters(self):
    tokenizer = features.CharTokenizer()
    self.assertEqual(tokenizer.vocab_size, 29)
    ids = tokenizer.encode(tf.constant("IT'S A DOG")).numpy()
    self.assertEqual(tokenizer.decode(ids), "IT'S A DOG")
    self.assertEqual(ids[0], features.CHARACTERS.index('I'))
    self.assertNotIn(0, ids.tolist())
    self.assertEqual(tokenizer.encode(tf.constant('a1')).numpy().tolist(), [-1, -1])


if __name__ == '__main__':
  absltest.main()
