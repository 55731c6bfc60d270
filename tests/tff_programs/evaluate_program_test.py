"""//tff_programs:evaluate as users run it: the WER table, and one-line errors."""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression.data import corpus
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from tests import tff_test_utils
from tff_programs import evaluate

_TINY = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                           train_utterances_per_speaker=1, dev_utterances_per_speaker=2,
                           test_utterances_per_speaker=3),
    short_form=None, seed=4)


class EvaluateProgramTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.data_dir = os.path.join(tmp, 'corpus')
    corpus.generate(cls.data_dir, _TINY, log=lambda message: None)
    config = asr.tiny_config(vocab_size=29)
    config['encoder'].update(num_blocks=1, model_dim=32)
    model = registry.build_keras_model(config)
    cls.model_dir = os.path.join(tmp, 'model')
    checkpoint.save_model(cls.model_dir, config, tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in model.trainable_variables],
        non_trainable=[v.numpy() for v in model.non_trainable_variables]))
    cls.json_path = os.path.join(tmp, 'wer.json')

  def _run(self, *flags):
    return tff_test_utils.run_program('evaluate', *flags, timeout=300)

  def test_prints_and_writes_the_table_per_split(self):
    result = self._run(f'--model_dir={self.model_dir}', f'--data_dir={self.data_dir}',
                       '--splits=dev-clean,test-clean', f'--output_json={self.json_path}')
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertRegex(result.stdout, r'dev-clean +4 +\d+ +\d+\.\d\d% +\d+\.\d\d%')
    self.assertRegex(result.stdout, r'test-clean +3 +\d+ +\d+\.\d\d% +\d+\.\d\d%')
    with open(self.json_path) as f:
      table = json.load(f)
    self.assertEqual(table['test-clean']['num_utterances'], 3)
    utterances = table['test-clean']['utterances']
    self.assertLen(utterances['utterance_ids'], 3)
    self.assertEqual(sum(utterances['words']), table['test-clean']['num_reference_words'])
    self.assertAlmostEqual(sum(utterances['errors']) / sum(utterances['words']),
                           table['test-clean']['wer'])
    # An untrained model transcribes nothing right: its WER is far from zero.
    self.assertGreater(table['dev-clean']['wer'], 0.5)
    self.assertTrue(np.isfinite(table['test-clean']['cer']))

  def test_compares_with_a_baseline_on_the_same_utterances(self):
    # The model against itself: the same transcripts, so a zero difference with a zero-width
    # interval; the default splits are the main domain's dev and test.
    result = self._run(f'--model_dir={self.model_dir}', f'--data_dir={self.data_dir}',
                       f'--baseline_model_dir={self.model_dir}',
                       f'--output_json={self.json_path}')
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertRegex(result.stdout, r'test-clean +\d+\.\d\d% +\d+\.\d\d% +\+0\.00 +'
                     r'\+0\.0% \[\+0\.0%, \+0\.0%\]')
    with open(self.json_path) as f:
      table = json.load(f)
    self.assertEqual(set(table), {'dev-clean', 'test-clean'})
    comparison = table['dev-clean']['comparison']
    self.assertEqual(comparison['absolute_interval'], [0.0, 0.0])
    self.assertEqual(comparison['num_utterances'], 4)
    self.assertEqual(comparison['num_resamples'], 1000)

  def test_bad_input_is_named_in_one_line(self):
    cases = [
        (['--model_dir=/nonexistent'], '--model_dir=/nonexistent: /nonexistent is not a model'),
        ([f'--model_dir={self.model_dir}', '--splits=train-other-500',
          f'--data_dir={self.data_dir}'], 'train-other-500: no such corpus split directory'),
        ([], '--model_dir is required'),
        ([f'--model_dir={self.model_dir}', '--baseline_model_dir=/nonexistent',
          f'--data_dir={self.data_dir}'], '--baseline_model_dir=/nonexistent: /nonexistent is '
         'not a model'),
        ([f'--model_dir={self.model_dir}', '--domain=short-form',
          f'--data_dir={self.data_dir}'], 'dev-short: no such corpus split directory'),
    ]
    tff_test_utils.assert_bad_input(self, evaluate, cases, launcher=self._run)


if __name__ == '__main__':
  absltest.main()
