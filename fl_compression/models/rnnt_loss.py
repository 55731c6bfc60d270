"""The RNN-T (transducer) loss in plain TensorFlow ops, differentiable by autodiff.

Graves 2012: with blank log-probabilities b[t, u] and label log-probabilities y[t, u] (of
emitting label u+1 at frame t after u labels),

  alpha[0, 0] = 0
  alpha[t, u] = logaddexp(alpha[t-1, u] + b[t-1, u], alpha[t, u-1] + y[t, u-1])
  loss = -(alpha[T-1, U] + b[T-1, U])

The time recursion runs in `tf.scan`; within a frame the label recursion is a prefix sum in
log space, computed in one shot:

  alpha[t, u] = c[u] + logcumsumexp_{u' <= u}(alpha[t-1, u'] + b[t-1, u'] - c[u']),
  c[u] = sum_{k < u} y[t, k].

Padded frames and labels never feed a valid lattice cell (the recursion only looks back), so
each example's loss is read at its own (T_b - 1, U_b).
"""

import tensorflow as tf


def _check_rank(name: str, tensor: tf.Tensor, rank: int) -> None:
  if tensor.shape.rank is not None and tensor.shape.rank != rank:
    raise ValueError(f'rnnt_loss: {name} must have rank {rank}, got shape {tensor.shape}')


def rnnt_loss(log_probs: tf.Tensor, labels: tf.Tensor, logit_length: tf.Tensor,
              label_length: tf.Tensor, blank: int = 0) -> tf.Tensor:
  """Per-example transducer negative log-likelihood [B].

  Args:
    log_probs: [B, T, U+1, V] log-softmax outputs of the joint network.
    labels: [B, U] int label ids (padding arbitrary but in the vocabulary range).
    logit_length: [B] valid frames per example (>= 1).
    label_length: [B] valid labels per example (<= U).
    blank: the blank token id.
  """
  log_probs = tf.convert_to_tensor(log_probs)
  labels = tf.cast(labels, tf.int32)
  logit_length = tf.cast(logit_length, tf.int32)
  label_length = tf.cast(label_length, tf.int32)
  for name, tensor, rank in (('log_probs', log_probs, 4), ('labels', labels, 2),
                             ('logit_length', logit_length, 1),
                             ('label_length', label_length, 1)):
    _check_rank(name, tensor, rank)
  dtype = log_probs.dtype
  blank_lp = log_probs[:, :, :, blank]  # [B, T, U+1]
  # y[b, t, u] = log_probs[b, t, u, labels[b, u]] for u < U.
  emitting = log_probs[:, :, :-1, :]
  indices = tf.broadcast_to(labels[:, None, :, None], tf.concat([tf.shape(emitting)[:3], [1]], 0))
  label_lp = tf.gather(emitting, indices, axis=3, batch_dims=3)[..., 0]  # [B, T, U]
  # Prefix sums of label log-probabilities along u: c[b, t, u], u = 0..U.
  cumulative = tf.pad(tf.cumsum(label_lp, axis=2), [[0, 0], [0, 0], [1, 0]])

  first_row = cumulative[:, 0, :]  # alpha[0, u]: u labels emitted at frame 0.

  def next_row(previous, inputs):
    """alpha[t-1, :] -> alpha[t, :] given b[t-1, :] and c[t, :]."""
    previous_blank, c = inputs
    return c + tf.math.cumulative_logsumexp(previous + previous_blank - c, axis=1)

  time_major = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731
  later_rows = tf.scan(next_row,
                       (time_major(blank_lp[:, :-1, :]), time_major(cumulative[:, 1:, :])),
                       initializer=first_row)  # [T-1, B, U+1]
  alpha = tf.concat([first_row[None], later_rows], axis=0)  # [T, B, U+1]
  alpha = tf.transpose(alpha, [1, 0, 2])  # [B, T, U+1]
  last = tf.stack([logit_length - 1, label_length], axis=1)
  final = tf.gather_nd(alpha + blank_lp, last, batch_dims=1)
  return tf.cast(-final, dtype)


def rnnt_loss_from_logits(logits: tf.Tensor, labels: tf.Tensor, logit_length: tf.Tensor,
                          label_length: tf.Tensor, blank: int = 0) -> tf.Tensor:
  """`rnnt_loss` of joint-network logits [B, T, U+1, V] (log-softmax over V applied here)."""
  logits = tf.convert_to_tensor(logits)
  _check_rank('logits', logits, 4)
  return rnnt_loss(tf.nn.log_softmax(logits, axis=-1), labels, logit_length, label_length,
                   blank)
