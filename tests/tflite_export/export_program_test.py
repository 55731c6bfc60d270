"""//tflite_export:export as users run it: the bundle, its verification, one-line errors."""

import json
import os
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression.compression import aqt

from fl_compression.data import corpus
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from tests import tff_test_utils
from tflite_export import bundle
from tflite_export import export
from tflite_export import flatbuffer

_CORPUS = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=1, num_test_speakers=1,
                           train_utterances_per_speaker=1, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=3),
    short_form=None, seed=5)


def _export_command() -> list[str]:
  runfiles = os.environ.get('TEST_SRCDIR')
  if runfiles:
    return [os.path.join(runfiles, 'flc', 'tflite_export', 'export')]
  return [sys.executable, os.path.join(os.path.dirname(__file__), '..', '..', 'tflite_export',
                                       'export.py')]


class ExportProgramTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.data_dir = os.path.join(cls.tmp, 'corpus')
    corpus.generate(cls.data_dir, _CORPUS, log=lambda message: None)
    config = asr.tiny_config(vocab_size=29)
    config['encoder'].update(num_blocks=2, model_dim=32)
    model = registry.build_keras_model(config)
    cls.model_dir = os.path.join(cls.tmp, 'final_model')
    checkpoint.save_model(cls.model_dir, config, tff.learning.models.ModelWeights(
        [v.numpy() for v in model.trainable_variables],
        [v.numpy() for v in model.non_trainable_variables]),
        {'algorithm': 'fedaqt', 'algorithm_flags': {'aqt_bits': 5}})
    cls.env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

  def _run(self, *flags):
    return subprocess.run(_export_command() + list(flags), capture_output=True, text=True,
                          env=self.env, timeout=900)

  def test_exports_verifies_and_reports_the_bundle(self):
    output_dir = os.path.join(self.tmp, 'bundle')
    result = self._run(f'--model_dir={self.model_dir}', f'--output_dir={output_dir}',
                       f'--data_dir={self.data_dir}', '--trainable=last_blocks:1')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('Verification on 3 test-clean utterances: all checks passed', result.stdout)
    self.assertRegex(result.stdout, r'infer +\(feature_length int32\[-1\], features '
                     r'float32\[-1, -1, 80\]\)\n +flex: none \(builtins only\)')
    self.assertRegex(result.stdout, r'train step in the TFLite interpreter, batch 4 x 400 '
                     r'frames: [\d.]+ s, peak RSS [\d,]+ MiB')
    with open(os.path.join(output_dir, 'manifest.json')) as f:
      manifest = json.load(f)
    checks = manifest['verification']['checks']
    self.assertTrue(all(c['ok'] for c in checks.values()))
    self.assertEqual(checks['transcribe_token_mismatches']['value'], 0)
    self.assertGreater(manifest['memory']['train_step_peak_rss_bytes'],
                       manifest['memory']['rss_loaded_bytes'])
    # Only the last block and the head train; everything else is a constant of the file.
    trainable = manifest['training']['trainable_variables']
    self.assertTrue(trainable)
    self.assertTrue(all(n.startswith(('encoder/block_01/', 'ctc_head/')) for n in trainable))
    self.assertLess(manifest['trainable_parameters'], manifest['parameters'] / 2)
    # A FedAQT model also gets its inference model with the run's 5-bit weights (held in
    # int8 tensors).
    self.assertIn('model_int8.tflite', manifest['files'])
    self.assertTrue(checks['int8_infer_logits_max_abs_diff']['ok'])
    self.assertIn("5-bit symmetric codes per output channel (the FedAQT clients' grid)",
                  manifest['int8_model']['weights'])
    # The stored codes are FedAQT's: each int8 tensor, dequantized, is a weight matrix of the
    # model quantized by FedAQT's own quantizer (in TFLite's layout).
    model, _ = checkpoint.load_keras_model(self.model_dir)
    expected = []
    for variable in model.trainable_variables:
      if variable.shape.rank >= 2:
        q = aqt.dequantize(aqt.quantize(variable, 5)).numpy()
        expected += [q, np.moveaxis(q, -1, 0), q.reshape((1, 1) + q.shape[:1] + (-1,))]
    with open(os.path.join(output_dir, 'model_int8.tflite'), 'rb') as f:
      stored = flatbuffer.int8_weights(f.read())
    self.assertGreaterEqual(len(stored), manifest['int8_model']['quantized_weight_matrices'])
    for name, values in stored:
      self.assertTrue(any(e.shape == values.shape and np.allclose(e, values, rtol=1e-6,
                                                                  atol=1e-9)
                          for e in expected), name)

  def test_critical_blocks_of_a_ranking_are_what_train_updates(self):
    ranking = os.path.join(self.tmp, 'ranking.json')
    config = checkpoint.load_config(self.model_dir)['model']
    with open(ranking, 'w') as f:  # Block 1 most critical.
      json.dump({'ambient_first': [0, 1], 'blocks': [{}, {}], 'model': config}, f)
    output_dir = os.path.join(self.tmp, 'critical_bundle')
    result = self._run(f'--model_dir={self.model_dir}', f'--output_dir={output_dir}',
                       '--trainable=critical:1', f'--ranking={ranking}', '--verify=false',
                       '--measure_memory=false')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(output_dir, 'manifest.json')) as f:
      manifest = json.load(f)
    trainable = manifest['training']['trainable_variables']
    self.assertTrue(trainable)
    self.assertTrue(all(n.startswith('encoder/block_01/') for n in trainable), trainable)
    # The phone's checkpoint holds those variables (and their optimizer slots), no other
    # variable of the model: everything else is a constant of the file.
    saved = [n for n in manifest['training']['checkpoint_tensors']
             if n.startswith(('encoder/', 'ctc_head/'))]
    self.assertEqual(sorted(saved), sorted(trainable))

  def test_fedaqt_bits_come_from_the_runs_flags(self):
    self.assertEqual(bundle.aqt_bits({'algorithm': 'fedaqt', 'algorithm_flags': {}}), 8)
    self.assertEqual(bundle.aqt_bits({'algorithm': 'fp', 'algorithm_flags': {
        'fp_compress': 'fedaqt', 'aqt_bits': 4}}), 4)
    self.assertIsNone(bundle.aqt_bits({'algorithm': 'fp', 'algorithm_flags': {
        'fp_compress': 'omc', 'aqt_bits': 4}}))
    self.assertIsNone(bundle.aqt_bits({'algorithm': 'fedavg'}))

  def test_bad_input_is_named_in_one_line(self):
    output_dir = os.path.join(self.tmp, 'never')
    cases = [
        ([f'--output_dir={output_dir}'], 'error: --model_dir is required'),
        ([f'--model_dir={self.tmp}/nothing', f'--output_dir={output_dir}'],
         r'error: --model_dir=\S+/nothing does not exist'),
        ([f'--model_dir={self.tmp}', f'--output_dir={output_dir}'],
         r'error: --model_dir=\S+: \S+ is not a model directory: config.json is missing'),
        ([f'--model_dir={self.model_dir}', f'--output_dir={output_dir}', '--quantize=int4'],
         r'error: --quantize=int4 is unknown; known: none, int8'),
        ([f'--model_dir={self.model_dir}', f'--output_dir={output_dir}',
          '--trainable=last_blocks:5'], r'error: --trainable=last_blocks:5: the model has 2 '
                                        r'encoder blocks'),
        ([f'--model_dir={self.model_dir}', f'--output_dir={output_dir}',
          '--trainable=critical:1'], r'error: --trainable=critical:1 needs --ranking'),
        ([f'--model_dir={self.model_dir}', f'--output_dir={output_dir}',
          '--trainable=ambient:3'], r'error: --trainable=ambient:3: N must be in 1\.\.2'),
    ]
    tff_test_utils.assert_bad_input(
        self, export, [(flags, re.compile(message)) for flags, message in cases],
        launcher=self._run)
    self.assertFalse(os.path.exists(output_dir))


if __name__ == '__main__':
  absltest.main()
