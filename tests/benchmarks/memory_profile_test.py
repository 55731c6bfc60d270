"""The peak's live allocations, from synthetic events and from a profiled client step."""

from absl.testing import absltest

from fl_compression.benchmarks import client_step
from fl_compression.benchmarks import memory_profile
from fl_compression.models import asr

A, D = memory_profile.ALLOCATION, memory_profile.DEALLOCATION


def _event(kind, address, size, in_use, op):
  return memory_profile.Event(kind, address, size, in_use, op)


class LiveAtPeakTest(absltest.TestCase):

  def test_the_allocations_alive_when_the_allocator_peaks(self):
    events = [
        _event(A, 1, 100, 100, 'block_00/dropout/Cast'),
        _event(A, 2, 100, 200, 'block_01/dropout_3/Cast'),
        _event(A, 3, 50, 250, 'joint/add'),
        _event(D, 1, 100, 150, 'block_00/dropout/Cast'),
        _event(A, 4, 60, 210, 'gradient_tape/MatMul_1'),
        _event(D, 3, 50, 160, 'joint/add'),
        _event(A, 1, 80, 240, 'gradient_tape/MatMul_2'),  # Address reused: a new buffer.
    ]
    peak, groups = memory_profile.live_at_peak(events)
    self.assertEqual(peak, 250)
    self.assertEqual(groups, {'block_*/dropout/Cast': (200, 2), 'joint/add': (50, 1)})
    self.assertEqual(memory_profile.top_groups(groups, 1),
                     [{'op': 'block_*/dropout/Cast', 'bytes': 200, 'count': 2}])

  def test_a_later_higher_peak_replaces_the_earlier_one(self):
    events = [_event(A, 1, 10, 10, 'a'), _event(D, 1, 10, 0, 'a'), _event(A, 2, 30, 30, 'b')]
    self.assertEqual(memory_profile.live_at_peak(events), (30, {'b': (30, 1)}))
    self.assertEqual(memory_profile.live_at_peak([]), (0, {}))

  def test_op_names_fold_instances(self):
    self.assertEqual(memory_profile.group_op('block_07/seeded_dropout_43/Cast'),
                     'block_*/seeded_dropout/Cast')
    self.assertEqual(memory_profile.group_op('enc/block_12/ffn2/dense_in/mul_1'),
                     'enc/block_*/ffn2/dense_in/mul')
    self.assertEqual(memory_profile.group_op('gradient_tape/conv2/Conv2DBackpropInput'),
                     'gradient_tape/conv2/Conv2DBackpropInput')
    self.assertEqual(memory_profile.group_op(''), '(unnamed)')


class ProfiledStepTest(absltest.TestCase):

  def test_rematerialized_step_holds_at_most_two_blocks_of_dropout_masks(self):
    # Twelve blocks after a narrow subsampling, so the blocks decide the peak. Each block draws
    # 7 masks; before the masks waited for their inputs, TF computed all 84 up front and held
    # them to the backward pass (`conformer.SeededDropout`).
    config = asr.named_config('tiny', vocab_size=29)
    config['encoder'] = dict(config['encoder'], num_blocks=12, subsampling_channels=8)
    result = client_step.measure_in_subprocess(config, batch_size=8, seconds=4.0,
                                               label_length=5, steps=1, rematerialize=True,
                                               profile_top=1000)
    rows = result['profile']['peak_live_tensors']
    self.assertNotEmpty(rows)
    masks = sum(row['count'] for row in rows
                if 'seeded_dropout' in row['op'] and row['op'].endswith('/Cast'))
    self.assertLessEqual(masks, 14, rows)
    # What the peak lists was allocated during the profiled step, within its tensor memory
    # plus the variable buffers its updates replace (at most the parameters).
    listed = sum(row['bytes'] for row in rows)
    self.assertGreater(listed, 0)
    self.assertLessEqual(listed, result['profile']['step_tensor_bytes'] +
                         result['parameter_bytes'])


if __name__ == '__main__':
  absltest.main()
