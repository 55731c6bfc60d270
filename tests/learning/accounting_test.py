from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression.learning import accounting


class TypeNbytesTest(absltest.TestCase):

  def test_tensor_bytes_follow_dtype_and_shape(self):
    for dtype, shape in ((np.float32, (3, 5)), (np.int8, (7,)), (np.float16, (2, 2, 2)),
                         (np.int64, ())):
      expected = np.zeros(shape, dtype).nbytes
      self.assertEqual(accounting.type_nbytes(tff.TensorType(dtype, shape)), expected)

  def test_struct_and_federated_types_sum_their_members(self):
    struct = tff.StructType([('a', tff.TensorType(np.float32, (4, 4))),
                             ('b', tff.StructType([tff.TensorType(np.int32, (3,))]))])
    self.assertEqual(accounting.type_nbytes(struct), 64 + 12)
    self.assertEqual(accounting.type_nbytes(tff.FederatedType(struct, tff.CLIENTS)), 76)

  def test_unsized_types_are_rejected(self):
    with self.assertRaisesRegex(ValueError, 'unknown shape'):
      accounting.type_nbytes(tff.TensorType(np.float32, (None, 3)))
    with self.assertRaisesRegex(ValueError, 'string'):
      accounting.type_nbytes(tff.TensorType(np.str_, (2,)))
    with self.assertRaises(TypeError):
      accounting.type_nbytes(tff.SequenceType(tff.TensorType(np.float32, (2,))))


if __name__ == '__main__':
  absltest.main()
