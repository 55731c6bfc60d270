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
    self.assertEqual(result['allocator'], 'bfc')
    self.assertTrue(np.isfinite(result['first_loss']))
    self.assertEqual(result['parameters'], registry.build_keras_model(config).count_params())
    # The step's tensors grow with the utterances (activations) on top of a part that does
    # not (gradients, and the scratch buffers of TF's convolution gradients: about 37 MiB at
    # this size, which the BFC allocator counts): 2 -> 8 utterances of 4 s measured 60 ->
    # 130 MiB.
    longer = client_step.measure_in_subprocess(config, batch_size=2, seconds=4.0,
                                               label_length=5, steps=2)
    larger = client_step.measure_in_subprocess(config, batch_size=8, seconds=4.0,
                                               label_length=5, steps=2)
    self.assertGreater(result['step_tensor_bytes'], 0)
    self.assertGreater(longer['step_tensor_bytes'], result['step_tensor_bytes'])
    self.assertGreater(larger['step_tensor_bytes'], 1.8 * longer['step_tensor_bytes'])
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

  def test_rematerialized_step_keeps_fewer_tensors(self):
    # Twelve small blocks, whose activations outweigh the subsampling's: 145 -> 63 MiB measured.
    config = asr.named_config('tiny', vocab_size=29)
    config['encoder']['num_blocks'] = 12
    plain = client_step.measure_in_subprocess(config, batch_size=8, seconds=2.0, label_length=5,
                                              steps=2)
    remat = client_step.measure_in_subprocess(config, batch_size=8, seconds=2.0, label_length=5,
                                              steps=2, rematerialize=True)
    self.assertFalse(plain['rematerialize'])
    self.assertTrue(remat['rematerialize'])
    # Same model, same batch: only the activations kept for the backward pass differ.
    self.assertEqual(remat['held_parameter_bytes'], plain['held_parameter_bytes'])
    self.assertTrue(np.isfinite(remat['first_loss']))
    self.assertLess(remat['step_tensor_bytes'], 0.7 * plain['step_tensor_bytes'])

  def test_rematerializing_a_model_without_a_conformer_fails_clearly(self):
    config = {'name': 'mlp', 'input_dim': 80, 'hidden_units': [4], 'num_classes': 3,
              'vocab_size': 3}
    with self.assertRaisesRegex(ValueError, "'mlp' has no Conformer encoder"):
      client_step.measure(config, batch_size=1, seconds=0.1, label_length=1, steps=1,
                          rematerialize=True)

  def test_stored_results_are_current_only_for_the_same_step(self):
    stored = {'batch_size': 4, 'frames': 400, 'step_tensor_bytes': 1, 'allocator': 'bfc'}
    self.assertTrue(client_step.is_current(stored, batch_size=4, seconds=4.0))
    self.assertFalse(client_step.is_current(stored, batch_size=4, seconds=4.0,
                                            rematerialize=True))
    remat = dict(stored, rematerialize=True, remat_revision=client_step.REMAT_REVISION)
    self.assertTrue(client_step.is_current(remat, batch_size=4, seconds=4.0,
                                           rematerialize=True))
    self.assertFalse(client_step.is_current(remat, batch_size=4, seconds=4.0))
    # Rematerialized before the dropout masks waited for their inputs.
    first_revision = dict(remat, remat_revision=1)
    self.assertFalse(client_step.is_current(first_revision, batch_size=4, seconds=4.0,
                                            rematerialize=True))
    self.assertFalse(client_step.is_current(stored, batch_size=1, seconds=4.0))
    self.assertFalse(client_step.is_current(stored, batch_size=4, seconds=2.0))
    older = {'batch_size': 4, 'frames': 400}  # Before the tensor-memory probe.
    self.assertFalse(client_step.is_current(older, batch_size=4, seconds=4.0))
    onednn = dict(stored)  # Tensor memory from the oneDNN allocator, before the BFC probe.
    del onednn['allocator']
    self.assertFalse(client_step.is_current(onednn, batch_size=4, seconds=4.0))
    self.assertFalse(client_step.is_current(None, batch_size=4, seconds=4.0))

  def test_compression_specs(self):
    self.assertIsNone(client_step.parse_compression('none'))
    self.assertEqual(client_step.parse_compression('omc:S1E4M6'),
                     {'codec': 'omc', 'format': 'S1E4M6'})
    self.assertEqual(client_step.parse_compression('aqt:6'), {'codec': 'aqt', 'bits': 6})
    codec, bits = client_step.compression_codec({'codec': 'aqt', 'bits': 6})
    self.assertEqual((codec.bits, bits), (6, 6))
    codec, bits = client_step.compression_codec({'codec': 'omc', 'format': 'S1E5M10'})
    self.assertEqual((codec.fmt.bits, bits), (16, 0))
    for spec, message in (('aqt:3', '3-bit quantization is outside the supported 4..8'),
                          ('aqt:x', "'x' is not a bit width"),
                          ('omc:E4M6', 'E4M6'),
                          ('none:1', 'expected none, omc:<format> or aqt:<bits>'),
                          ('int8', 'expected none, omc:<format> or aqt:<bits>')):
      with self.assertRaisesRegex(ValueError, message, msg=spec):
        client_step.parse_compression(spec)

  def test_failure_names_the_model(self):
    config = dict(asr.named_config('tiny', vocab_size=29), name='tiny_broken')
    config['encoder'] = dict(config['encoder'], model_dim=-1)
    with self.assertRaisesRegex(RuntimeError, 'tiny_broken'):
      client_step.measure_in_subprocess(config, batch_size=1, seconds=0.5, label_length=2,
                                        steps=1)


if __name__ == '__main__':
  absltest.main()
