"""ZeroFL's sparse upload of one weight matrix: the model delta at the matrix's top-k positions.

A client sends, per SWAT matrix, the delta of its `k = upload_count(size, sparsity,
mask_ratio)` entries that are largest in magnitude in the trained weights (the top
`1 - sparsity` it trained with plus the next `mask_ratio`), as

- `values`: float32 [k], the deltas in ascending position order (or their OMC encoding), and
- `positions`: one uint8 buffer, whichever of two encodings of the positions is smaller for
  this upload: byte 0 says which.
  - `BITMAP` (0): one bit per matrix entry, little-endian within each byte, `ceil(size / 8)`
    bytes.
  - `GAPS` (1): the gaps between consecutive positions (the first from -1, so every gap is at
    least 1), each as a LEB128 varint (7 bits per byte, high bit set on all but the last byte
    of a gap).

The buffer's length depends on the data (the `GAPS` form), so its TFF type has an unknown
dimension and the upload's size is measured from the buffers, never from the type.
"""

import math

import numpy as np
import tensorflow as tf

from fl_compression.zerofl import swat

BITMAP, GAPS = 0, 1
_VARINT_BYTES = 5  # Enough for any int32 gap.


def upload_count(size: int, sparsity: float, mask_ratio: float) -> int:
  """Entries a client uploads of a matrix with `size` entries."""
  return swat.kept_count(size, min(1.0, 1.0 - sparsity + mask_ratio))


def bitmap_bytes(size: int) -> int:
  return 1 + math.ceil(size / 8)


def _bitmap(indices: tf.Tensor, size: int) -> tf.Tensor:
  bits = tf.cast(swat.mask_of(indices, [8 * math.ceil(size / 8)]), tf.int32)
  weights = tf.constant([1 << i for i in range(8)], tf.int32)
  packed = tf.reduce_sum(tf.reshape(bits, [-1, 8]) * weights, axis=1)
  return tf.concat([[BITMAP], tf.cast(packed, tf.uint8)], 0)


def _varint_lengths(gaps: tf.Tensor) -> tf.Tensor:
  """Bytes of each gap's LEB128 varint."""
  lengths = tf.ones_like(gaps)
  for shift in range(1, _VARINT_BYTES):
    lengths += tf.cast(gaps >= (1 << (7 * shift)), tf.int32)
  return lengths


def _gaps(indices: tf.Tensor) -> tf.Tensor:
  indices = tf.cast(indices, tf.int32)
  return indices - tf.concat([[-1], indices[:-1]], 0)


def _varints(indices: tf.Tensor) -> tf.Tensor:
  gaps = _gaps(indices)
  lengths = _varint_lengths(gaps)
  shifts = 7 * tf.range(_VARINT_BYTES)
  groups = tf.bitwise.bitwise_and(tf.bitwise.right_shift(gaps[:, None], shifts[None, :]), 0x7F)
  more = tf.range(_VARINT_BYTES)[None, :] < lengths[:, None] - 1
  groups = tf.where(more, groups + 0x80, groups)
  present = tf.range(_VARINT_BYTES)[None, :] < lengths[:, None]
  return tf.concat([[GAPS], tf.cast(tf.boolean_mask(groups, present), tf.uint8)], 0)


def encode_positions(indices: tf.Tensor, size: int) -> tf.Tensor:
  """The smaller of the two encodings of ascending flat `indices` into a matrix of `size`
  entries (equal sizes: the bitmap)."""
  gap_bytes = 1 + tf.reduce_sum(_varint_lengths(_gaps(indices)))
  return tf.cond(gap_bytes < bitmap_bytes(size), lambda: _varints(indices),
                 lambda: _bitmap(indices, size))


def decode_positions(buffer: tf.Tensor, size: int, count: int) -> tf.Tensor:
  """The ascending flat indices (int32 [count]) an `encode_positions` buffer holds."""
  body = tf.cast(buffer[1:], tf.int32)

  def from_bitmap():
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(body[:, None], tf.range(8)[None, :]),
                                  1)
    flat = tf.reshape(bits, [-1])[:size]
    return tf.reshape(tf.cast(tf.where(flat > 0), tf.int32), [count])

  def from_gaps():
    last = tf.equal(tf.bitwise.bitwise_and(body, 0x80), 0)
    # The gap each byte belongs to, and the byte's place within its gap.
    gap_id = tf.cumsum(tf.cast(last, tf.int32), exclusive=True)
    start = tf.concat([[0], tf.cast(tf.where(last)[:, 0] + 1, tf.int32)], 0)
    place = tf.range(tf.size(body)) - tf.gather(start, gap_id)
    parts = tf.bitwise.left_shift(tf.bitwise.bitwise_and(body, 0x7F), 7 * place)
    gaps = tf.math.unsorted_segment_sum(parts, gap_id, count)
    return tf.cumsum(gaps) - 1

  return tf.cond(tf.equal(buffer[0], BITMAP), from_bitmap, from_gaps)


def select(trained: tf.Tensor, count: int) -> tf.Tensor:
  """The upload's positions: the `count` entries of the trained matrix largest in magnitude."""
  return swat.top_k_indices(trained, count)


def scatter(values: tf.Tensor, indices: tf.Tensor, shape) -> tf.Tensor:
  """A dense tensor of `shape`: `values` at the flat `indices`, zero elsewhere."""
  size = int(np.prod(shape, dtype=np.int64))
  flat = tf.scatter_nd(tf.expand_dims(tf.cast(indices, tf.int64), 1), values, [size])
  return tf.reshape(flat, shape)
