from absl.testing import absltest
import numpy as np

from fl_compression.data import synthetic


def _arrays(client_data, client_id):
  examples = list(client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator())
  return (np.stack([e['x'] for e in examples]), np.array([e['y'] for e in examples]))


class SyntheticClientDataTest(absltest.TestCase):

  def test_same_seed_same_data(self):
    a = synthetic.make_client_data(3, 10, seed=5)
    b = synthetic.make_client_data(3, 10, seed=5)
    self.assertEqual(a.client_ids, b.client_ids)
    for cid in a.client_ids:
      for x, y in zip(_arrays(a, cid), _arrays(b, cid)):
        np.testing.assert_array_equal(x, y)

  def test_shapes_dtypes_and_label_range(self):
    data = synthetic.make_client_data(2, 12, input_dim=7, num_classes=3, seed=0)
    x, y = _arrays(data, data.client_ids[0])
    self.assertEqual(x.shape, (12, 7))
    self.assertEqual(x.dtype, np.float32)
    self.assertEqual(y.dtype, np.int32)
    self.assertTrue(np.all((y >= 0) & (y < 3)))

  def test_clients_are_not_identically_distributed(self):
    data = synthetic.make_client_data(6, 400, seed=0)
    histograms = [np.bincount(_arrays(data, cid)[1], minlength=4) / 400 for cid in data.client_ids]
    # Label distributions differ between clients by much more than sampling noise (~0.02).
    spread = np.max(np.ptp(np.stack(histograms), axis=0))
    self.assertGreater(spread, 0.2)

  def test_held_out_clients_are_new_clients(self):
    train = synthetic.make_client_data(2, 50, seed=0, id_prefix='client')
    held_out = synthetic.make_client_data(2, 50, seed=0, id_prefix='heldout')
    self.assertEmpty(set(train.client_ids) & set(held_out.client_ids))
    x_train, _ = _arrays(train, train.client_ids[0])
    x_held, _ = _arrays(held_out, held_out.client_ids[0])
    self.assertFalse(np.allclose(x_train, x_held))

  def test_non_positive_sizes_are_rejected(self):
    with self.assertRaisesRegex(ValueError, 'must be positive'):
      synthetic.make_client_data(0, 10)


if __name__ == '__main__':
  absltest.main()
