import math

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from fl_compression.zerofl import upload


def _numpy_varints(indices):
  """Reference LEB128 encoding of the gaps (first from -1)."""
  out = [upload.GAPS]
  previous = -1
  for i in indices:
    gap = int(i) - previous
    previous = int(i)
    while True:
      byte = gap & 0x7F
      gap >>= 7
      out.append(byte | (0x80 if gap else 0))
      if not gap:
        break
  return np.array(out, np.uint8)


def _numpy_bitmap(indices, size):
  bits = np.zeros(8 * math.ceil(size / 8), np.uint8)
  bits[indices] = 1
  return np.concatenate([[upload.BITMAP], np.packbits(bits, bitorder='little')]).astype(np.uint8)


class PositionsTest(absltest.TestCase):

  def test_buffers_match_numpy_references_and_the_smaller_is_chosen(self):
    rng = np.random.default_rng(0)
    # Dense selections favour the bitmap, sparse ones the gaps; large gaps need several bytes.
    for size, count in ((1000, 300), (1000, 20), (70_000, 50), (13, 13), (9, 1), (200_000, 3)):
      indices = np.sort(rng.choice(size, count, replace=False)).astype(np.int32)
      varints, bitmap = _numpy_varints(indices), _numpy_bitmap(indices, size)
      expected = varints if len(varints) < len(bitmap) else bitmap
      buffer = upload.encode_positions(tf.constant(indices), size).numpy()
      np.testing.assert_array_equal(buffer, expected, err_msg=str((size, count)))
      self.assertEqual(len(bitmap), upload.bitmap_bytes(size))
      decoded = upload.decode_positions(tf.constant(buffer), size, count).numpy()
      np.testing.assert_array_equal(decoded, indices)
      # Both forms decode, whichever was chosen.
      for other in (varints, bitmap):
        np.testing.assert_array_equal(
            upload.decode_positions(tf.constant(other), size, count).numpy(), indices)

  def test_upload_count(self):
    self.assertEqual(upload.upload_count(1000, 0.9, 0.2), 300)
    self.assertEqual(upload.upload_count(1000, 0.95, 0.0), 50)
    self.assertEqual(upload.upload_count(1000, 0.5, 0.7), 1000)

  def test_select_and_scatter_restrict_the_update_to_the_top_trained_entries(self):
    rng = np.random.default_rng(2)
    trained = rng.normal(size=(20, 10)).astype(np.float32)
    delta = rng.normal(size=(20, 10)).astype(np.float32)
    indices = upload.select(tf.constant(trained), 30).numpy()
    expected = np.sort(np.argsort(-np.abs(trained).ravel(), kind='stable')[:30])
    np.testing.assert_array_equal(indices, expected)
    dense = upload.scatter(tf.gather(tf.reshape(delta, [-1]), indices), indices, (20, 10))
    kept = np.zeros(200, bool)
    kept[expected] = True
    np.testing.assert_array_equal(dense.numpy(), np.where(kept.reshape(20, 10), delta, 0))


if __name__ == '__main__':
  absltest.main()
