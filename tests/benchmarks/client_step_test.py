"""The client-step probe measures its own process, not the process that started it."""

import numpy as np
import psutil
from absl.testing import absltest

from fl_compression.benchmarks import client_step
from fl_compression.models import asr
from fl_compression.models import registry


class ClientStepTest(absltest.TestCase):

  def test_peak_memory_is_the_child_process_own(self):
    # A parent far larger than the child: 3 GiB, every page touched. Linux carries `ru_maxrss`
    # across exec, so a probe reading it would report at least this much.
    ballast = np.ones(3 * 2**30 // 8, np.float64)
    parent_rss = psutil.Process().memory_info().rss
    self.assertGreater(parent_rss, 3 * 2**30)
    config = asr.named_config('tiny', vocab_size=29)
    result = client_step.measure_in_subprocess(config, batch_size=2, seconds=1.0,
                                               label_length=5, steps=2)
    del ballast
    self.assertLess(result['peak_rss_bytes'], parent_rss - 2**30)
    # The peak covers the model and the step's working memory.
    self.assertGreaterEqual(result['peak_rss_bytes'], result['rss_built_bytes'])
    self.assertGreater(result['rss_built_bytes'], result['rss_start_bytes'])
    self.assertGreater(result['step_working_bytes'], 0)
    self.assertTrue(np.isfinite(result['first_loss']))
    self.assertEqual(result['parameters'], registry.build_keras_model(config).count_params())
    # The step's tensors are mostly activations: four times the utterances, more than three
    # times the tensors (the gradients and temporaries that do not grow are a small part).
    larger = client_step.measure_in_subprocess(config, batch_size=8, seconds=1.0,
                                               label_length=5, steps=2)
    self.assertGreater(result['step_tensor_bytes'], 0)
    self.assertGreater(larger['step_tensor_bytes'], 3 * result['step_tensor_bytes'])
    self.assertEqual(larger['tensor_peak_bytes'],
                     larger['parameter_bytes'] + larger['step_tensor_bytes'])

  def test_compressed_step_holds_packed_kernels(self):
    config = asr.named_config('tiny', vocab_size=29)
    dense = client_step.measure_in_subprocess(config, batch_size=2, seconds=1.0, label_length=5,
                                              steps=2)
    aqt = client_step.measure_in_subprocess(config, batch_size=2, seconds=1.0, label_length=5,
                                            steps=2, compression={'codec': 'aqt', 'bits': 8})
    self.assertEqual(aqt['parameters'], dense['parameters'])
    self.assertEqual(dense['held_parameter_bytes'], dense['parameter_bytes'])
    # int8 kernels with float32 channel scales; subsampling convolutions, norms and biases
    # stay float32.
    self.assertLess(aqt['held_parameter_bytes'], 0.45 * dense['held_parameter_bytes'])
    # The tensor memory counts the packed kernels, not float ones.
    self.assertEqual(aqt['tensor_peak_bytes'],
                     aqt['held_parameter_bytes'] + aqt['step_tensor_bytes'])
    for result in (dense, aqt):
      self.assertTrue(np.isfinite(result['first_loss']))
      self.assertIsNotNone(result['step_peak_rss_bytes'])
      self.assertLessEqual(result['step_peak_rss_bytes'], result['peak_rss_bytes'])
      self.assertGreater(result['step_tensor_bytes'], 0)

  def test_stored_results_are_current_only_for_the_same_step(self):
    stored = {'batch_size': 4, 'frames': 400, 'step_tensor_bytes': 1}
    self.assertTrue(client_step.is_current(stored, batch_size=4, seconds=4.0))
    self.assertFalse(client_step.is_current(stored, batch_size=1, seconds=4.0))
    self.assertFalse(client_step.is_current(stored, batch_size=4, seconds=2.0))
    older = {'batch_size': 4, 'frames': 400}  # Before the tensor-memory probe.
    self.assertFalse(client_step.is_current(older, batch_size=4, seconds=4.0))
    self.assertFalse(client_step.is_current(None, batch_size=4, seconds=4.0))

  def test_failure_names_the_model(self):
    config = dict(asr.named_config('tiny', vocab_size=29), name='tiny_broken')
    config['encoder'] = dict(config['encoder'], model_dim=-1)
    with self.assertRaisesRegex(RuntimeError, 'tiny_broken'):
      client_step.measure_in_subprocess(config, batch_size=1, seconds=0.5, label_length=2,
                                        steps=1)


if __name__ == '__main__':
  absltest.main()
