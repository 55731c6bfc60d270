"""Token sequences as dense tensors: the kept entries of each row moved to the front.

Decoders emit a fixed number of slots per utterance; `left_aligned` packs the real tokens
first, padded with blank (0), with a `scatter_nd` rather than ragged tensors or boolean masks,
so the same code runs in TensorFlow and converts to TFLite builtin ops.
"""

import tensorflow as tf


def left_aligned(values: tf.Tensor, keep: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """The kept entries of each row of [B, N] int32 `values` moved to the front (the rest 0),
  and the count kept per row [B]. Entries not kept are scattered to an extra column that is
  cut off, so memory and work are O(B * N)."""
  keep_int = tf.cast(keep, tf.int32)
  batch, width = tf.shape(values)[0], tf.shape(values)[1]
  position = tf.where(keep, tf.cumsum(keep_int, axis=1) - 1, width)
  rows = tf.broadcast_to(tf.expand_dims(tf.range(batch), 1), tf.shape(values))
  indices = tf.stack([rows, position], axis=-1)
  placed = tf.scatter_nd(indices, values * keep_int, tf.stack([batch, width + 1]))
  return tf.slice(placed, [0, 0], [-1, width]), tf.reduce_sum(keep_int, axis=1)
