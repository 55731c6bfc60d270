import itertools
import math

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.models import rnnt_loss


def _alignments(frames, labels):
  """Every alignment as a list of (t, u, emits_label): U label and T-1 blank moves, then blank."""
  for label_steps in itertools.combinations(range(frames - 1 + labels), labels):
    t = u = 0
    path = []
    for k in range(frames - 1 + labels):
      if k in label_steps:
        path.append((t, u, True))
        u += 1
      else:
        path.append((t, u, False))
        t += 1
    path.append((t, u, False))  # The final blank at (T-1, U).
    yield path


def _brute_force_loss(log_probs, labels, frames, num_labels, blank=0):
  """-log of the summed probability of all alignments, walked one by one (float64 numpy)."""
  scores = [sum(log_probs[t, u, labels[u] if emits else blank] for t, u, emits in path)
            for path in _alignments(frames, num_labels)]
  return -np.logaddexp.reduce(scores)


def _brute_force_tf(logits, labels, frames, num_labels):
  """The same sum in TF ops (for gradients): logsumexp over stacked path scores."""
  log_probs = tf.nn.log_softmax(logits, axis=-1)
  scores = [tf.add_n([log_probs[t, u, labels[u] if emits else 0] for t, u, emits in path])
            for path in _alignments(frames, num_labels)]
  return -tf.reduce_logsumexp(tf.stack(scores))


def _random_case(seed, batch=3, frames=4, labels=3, vocab=4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, frames, labels + 1, vocab)) * 2.0
  label_ids = rng.integers(1, vocab, size=(batch, labels)).astype(np.int32)
  logit_length = np.array([frames, frames - 1, 2][:batch], np.int32)
  label_length = np.array([labels, 1, labels - 1][:batch], np.int32)
  return logits, label_ids, logit_length, label_length


class RnntLossTest(absltest.TestCase):

  def test_alignment_count_is_binomial(self):
    for frames, labels in ((1, 0), (3, 2), (4, 3), (5, 2)):
      self.assertLen(list(_alignments(frames, labels)),
                     math.comb(frames - 1 + labels, labels))

  def test_equals_brute_force_sum_over_alignments(self):
    for seed in range(4):
      logits, labels, logit_length, label_length = _random_case(seed)
      # Padded frames and labels hold junk that must not matter.
      log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
      expected = [_brute_force_loss(log_probs[b], labels[b], logit_length[b], label_length[b])
                  for b in range(len(labels))]
      actual = rnnt_loss.rnnt_loss_from_logits(
          logits.astype(np.float32), labels, logit_length, label_length).numpy()
      np.testing.assert_allclose(actual, expected, rtol=1e-5)

  def test_gradients_equal_brute_force_gradients(self):
    logits, labels, logit_length, label_length = _random_case(7)
    logits = tf.constant(logits)  # float64 on both sides.
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(logits)
      loss = tf.reduce_sum(rnnt_loss.rnnt_loss_from_logits(
          logits, labels, logit_length, label_length))
      reference = tf.add_n([
          _brute_force_tf(logits[b], labels[b], logit_length[b], label_length[b])
          for b in range(len(labels))])
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-10)
    grad = tape.gradient(loss, logits).numpy()
    np.testing.assert_allclose(grad, tape.gradient(reference, logits).numpy(), atol=1e-10)
    # Padded frames and label positions get exactly zero gradient.
    self.assertTrue(np.all(grad[1, logit_length[1]:] == 0))
    self.assertTrue(np.all(grad[2, :, label_length[2] + 1:] == 0))

  def test_single_frame_without_labels_is_blank_probability(self):
    logits = tf.constant([[[[0.3, -1.0, 2.0]]]])
    loss = rnnt_loss.rnnt_loss_from_logits(logits, tf.zeros([1, 0], tf.int32), [1], [0])
    self.assertAlmostEqual(float(loss[0]), -float(tf.nn.log_softmax(logits[0, 0, 0])[0]),
                           places=6)

  def test_graph_mode_with_dynamic_shapes_equals_eager(self):
    logits, labels, logit_length, label_length = _random_case(3)
    logits = logits.astype(np.float32)
    graph = tf.function(rnnt_loss.rnnt_loss_from_logits, input_signature=[
        tf.TensorSpec([None, None, None, None], tf.float32), tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])
    np.testing.assert_allclose(
        graph(logits, labels, logit_length, label_length).numpy(),
        rnnt_loss.rnnt_loss_from_logits(logits, labels, logit_length, label_length).numpy(),
        rtol=1e-6)

  def test_long_sequences_have_finite_loss_and_gradients(self):
    logits = tf.random.stateless_normal([2, 50, 21, 30], seed=[1, 2]) * 3.0
    labels = tf.random.stateless_uniform([2, 20], seed=[3, 4], minval=1, maxval=30,
                                         dtype=tf.int32)
    with tf.GradientTape() as tape:
      tape.watch(logits)
      loss = tf.reduce_sum(rnnt_loss.rnnt_loss_from_logits(logits, labels, [50, 31], [20, 11]))
    grad = tape.gradient(loss, logits)
    self.assertTrue(np.isfinite(float(loss)))
    self.assertTrue(np.all(np.isfinite(grad.numpy())))

  def test_wrong_rank_names_the_argument(self):
    with self.assertRaisesRegex(ValueError, 'log_probs must have rank 4'):
      rnnt_loss.rnnt_loss(tf.zeros([2, 3, 4]), tf.zeros([2, 1], tf.int32), [3, 3], [1, 1])
    with self.assertRaisesRegex(ValueError, 'labels must have rank 2'):
      rnnt_loss.rnnt_loss(tf.zeros([2, 3, 2, 4]), tf.zeros([2], tf.int32), [3, 3], [1, 1])


if __name__ == '__main__':
  absltest.main()
